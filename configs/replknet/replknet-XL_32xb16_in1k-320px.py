# RepLKNet-XL at 320 (pretrained on MegData-73M, fine-tuned on ImageNet-1K: 87.8 top-1 in the
# paper). Its inputs are normalized with mean = std = 127.5 (timm's "inception" constants).
_base_ = [
    '../_base_/models/replknet-31B_in1k.py', '../_base_/datasets/imagenet_320.py',
    '../_base_/schedules/imagenet_adamw_30e_finetune.py', '../_base_/default_runtime.py'
]
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(arch='XL', drop_path_rate=0.3),
    head=dict(in_channels=2048),
    train_cfg=dict(_delete_=True))
auto_scale_lr = dict(base_batch_size=512)
