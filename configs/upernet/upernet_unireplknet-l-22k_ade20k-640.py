# UperNet + UniRepLKNet-L (ImageNet-22K -> 1K weights, 384), ADE20K 640x640: as for B, drop path
# 0.4, layer decay 0.85 (the authors' config). README: 54.5 mIoU single-scale.
_base_ = ['./upernet_unireplknet-b-22k_ade20k-640.py']
model = dict(
    backbone=dict(
        arch='L', drop_path_rate=0.4,
        init_cfg=dict(checkpoint='checkpoints/unireplknet_l_in22k_to_in1k_384_acc87.88.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.85))
