# Cascade Mask R-CNN + RepLKNet-31B (ImageNet-22K weights), COCO 3x, drop path 0.4.
_base_ = ['./cascade-mask-rcnn_replknet31b_fpn_3x_coco.py']
model = dict(backbone=dict(
    drop_path_rate=0.4, init_cfg=dict(checkpoint='checkpoints/RepLKNet-31B_ImageNet-22K.pth')))
