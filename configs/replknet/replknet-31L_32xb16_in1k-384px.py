# RepLKNet-31L at 384, fine-tuned on ImageNet-1K from ImageNet-22K (drop path 0.3, 16 per GPU).
_base_ = [
    '../_base_/models/replknet-31B_in1k.py', '../_base_/datasets/imagenet_384.py',
    '../_base_/schedules/imagenet_adamw_30e_finetune.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(arch='31L', drop_path_rate=0.3),
    head=dict(in_channels=1536),
    train_cfg=dict(_delete_=True))
train_dataloader = dict(batch_size=16)
auto_scale_lr = dict(base_batch_size=512)
