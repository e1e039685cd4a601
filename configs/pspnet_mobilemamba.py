# Short name for mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py (same model and schedule).
_base_ = ['./mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py']
