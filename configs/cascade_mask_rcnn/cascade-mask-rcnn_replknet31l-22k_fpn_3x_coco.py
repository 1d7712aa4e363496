# Cascade Mask R-CNN + RepLKNet-31L (ImageNet-22K weights), COCO 3x, drop path 0.7.
_base_ = ['./cascade-mask-rcnn_replknet31b_fpn_3x_coco.py']
model = dict(
    backbone=dict(arch='31L', drop_path_rate=0.7,
                  init_cfg=dict(checkpoint='checkpoints/RepLKNet-31L_ImageNet-22K.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
