# Short name for the paper's RetinaNet-B1 COCO config (see the file below for the settings).
_base_ = './mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py'
