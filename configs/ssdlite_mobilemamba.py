# Short name for the paper's SSDLite-B1 COCO config at 320 px (see the file below; the 512 px
# variant is configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-512.py).
_base_ = './mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py'
