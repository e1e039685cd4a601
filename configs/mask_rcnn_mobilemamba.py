# Short name for the paper's Mask R-CNN-B1 COCO config (see the file below for the settings).
_base_ = './mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py'
