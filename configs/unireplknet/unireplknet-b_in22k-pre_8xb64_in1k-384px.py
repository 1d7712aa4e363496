# UniRepLKNet-B fine-tuned at 384 on ImageNet-1K from the authors' ImageNet-22K checkpoint (87.4 top-1
# in their README): drop path 0.2, no Mixup / CutMix, 512 images per step, head init scaled by 1e-3.
# The backbone loads the authors' 22K file as released (their classifier norm becomes norm3).
_base_ = [
    '../_base_/models/unireplknet_in1k.py', '../_base_/datasets/imagenet_384.py',
    '../_base_/schedules/unireplknet_in22k_to_in1k_30e.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(
        arch='B',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/unireplknet_b_in22k_pretrain.pth')),
    head=dict(in_channels=1024, init_cfg=dict(type='TruncNormal', layer='Linear', std=2e-5, bias=0.)),
    train_cfg=dict(_delete_=True))
train_dataloader = dict(batch_size=64)
