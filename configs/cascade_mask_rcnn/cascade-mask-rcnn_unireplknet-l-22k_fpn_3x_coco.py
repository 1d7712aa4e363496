# Cascade Mask R-CNN + UniRepLKNet-L (ImageNet-22K -> 1K weights), COCO 3x: as for B, drop path
# 0.7, layer decay 0.7. README: 55.8 box AP / 48.4 mask AP.
_base_ = ['./cascade-mask-rcnn_unireplknet-b-22k_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        arch='L', drop_path_rate=0.7,
        init_cfg=dict(checkpoint='checkpoints/unireplknet_l_in22k_to_in1k_384_acc87.88.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
