# RepLKNet-31B fine-tuned from 224 to 384 on ImageNet-1K (84.8 top-1 in the paper): drop path 0.8,
# no Mixup / CutMix. Set load_from to the 224 checkpoint.
_base_ = [
    '../_base_/models/replknet-31B_in1k.py', '../_base_/datasets/imagenet_384.py',
    '../_base_/schedules/imagenet_adamw_30e_finetune.py', '../_base_/default_runtime.py'
]
model = dict(backbone=dict(drop_path_rate=0.8), train_cfg=dict(_delete_=True))
