# Cascade Mask R-CNN + UniRepLKNet-XL (ImageNet-22K -> 1K weights), COCO 3x: as for L (drop path
# 0.7, layer decay 0.7). README: 56.4 box AP / 49.0 mask AP.
_base_ = ['./cascade-mask-rcnn_unireplknet-l-22k_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        arch='XL',
        init_cfg=dict(checkpoint='checkpoints/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
