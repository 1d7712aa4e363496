# UniRepLKNet-XL fine-tuned at 384 on ImageNet-1K from the authors' ImageNet-22K checkpoint (88.0 top-1
# in their README): drop path 0.3, no Mixup / CutMix, 512 images per step, head init scaled by 1e-3;
# as the authors for L / XL (following InternImage-L): 20 epochs, label smoothing 0.3, EMA.
# The backbone loads the authors' 22K file as released (their classifier norm becomes norm3).
_base_ = [
    '../_base_/models/unireplknet_in1k.py', '../_base_/datasets/imagenet_384.py',
    '../_base_/schedules/unireplknet_in22k_to_in1k_30e.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(
        arch='XL',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/unireplknet_xl_in22k_pretrain.pth')),
    head=dict(
        in_channels=2048,
        loss=dict(label_smooth_val=0.3),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=2e-5, bias=0.)),
    train_cfg=dict(_delete_=True))
train_dataloader = dict(batch_size=32)
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=0, end=20)]
train_cfg = dict(max_epochs=20)
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
