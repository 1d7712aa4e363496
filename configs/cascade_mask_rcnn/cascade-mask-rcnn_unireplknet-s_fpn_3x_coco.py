# Cascade Mask R-CNN + UniRepLKNet-S (ImageNet-1K weights), COCO 3x: as for T, drop path 0.5.
_base_ = ['./cascade-mask-rcnn_unireplknet-t_fpn_3x_coco.py']
model = dict(
    backbone=dict(arch='S', drop_path_rate=0.5,
                  init_cfg=dict(checkpoint='checkpoints/unireplknet_s_in1k_224_acc83.91.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
