# UniRepLKNet-S, ImageNet-1K from scratch at 224 (83.9 top-1 in the authors' README): drop path 0.4,
# Mixup 0.8 / CutMix 1.0, 4096 images per step (the authors: 8 GPUs x 64 x 8 accumulation).
_base_ = [
    '../_base_/models/unireplknet_in1k.py', '../_base_/datasets/imagenet_224.py',
    '../_base_/schedules/unireplknet_in1k_300e.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(arch='S', drop_path_rate=0.4),
    head=dict(in_channels=768),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
train_dataloader = dict(batch_size=64)
