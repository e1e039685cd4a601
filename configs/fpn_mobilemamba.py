# Short name for mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py (same model and schedule).
_base_ = ['./mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py']
