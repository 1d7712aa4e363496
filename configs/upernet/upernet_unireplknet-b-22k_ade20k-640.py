# UperNet + UniRepLKNet-B (ImageNet-22K -> 1K weights, 384), ADE20K 640x640, 160k x 16: the
# authors' recipe (AdamW 1e-4, layer decay 0.9, 1500-iteration warm-up, drop path 0.3,
# checkpointing, whole-image test at 2560x640). README: 53.5 mIoU single-scale.
_base_ = [
    '../_base_/models/upernet_unireplknet.py', '../_base_/datasets/ade20k_640.py',
    '../_base_/schedules/seg_unireplknet_160k.py', '../_base_/default_runtime.py'
]
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='B',
        drop_path_rate=0.3,
        with_cp=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/unireplknet_b_in22k_to_in1k_384_acc87.40.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9))
