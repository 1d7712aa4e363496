# UniRepLKNet-A, ImageNet-1K from scratch at 224 (77.0 top-1 in the authors' README): drop path 0.0,
# Mixup 0.3 / CutMix 0.3, 4096 images per step (the authors: 4 GPUs x 128 x 8 accumulation).
_base_ = [
    '../_base_/models/unireplknet_in1k.py', '../_base_/datasets/imagenet_224.py',
    '../_base_/schedules/unireplknet_in1k_300e.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(arch='A', drop_path_rate=0.0),
    head=dict(in_channels=320),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.3), dict(type='CutMix', alpha=0.3)]))
train_dataloader = dict(batch_size=128)
