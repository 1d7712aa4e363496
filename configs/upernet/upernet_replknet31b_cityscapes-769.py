# UperNet + RepLKNet-31B (ImageNet-1K weights), Cityscapes 769x769, 80k x 16. Paper: 83.1 mIoU.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/cityscapes_769.py',
    '../_base_/schedules/seg_adamw_80k.py', '../_base_/default_runtime.py'
]
crop_size = (769, 769)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained',
                                checkpoint='checkpoints/RepLKNet-31B_ImageNet-1K_224.pth')),
    decode_head=dict(num_classes=19, align_corners=True),
    auxiliary_head=dict(num_classes=19, align_corners=True))
