# UperNet + UniRepLKNet-XL (ImageNet-22K -> 1K weights, 384), ADE20K 640x640: the authors released
# the checkpoint (README: 55.2 mIoU single-scale) but no config; L's recipe (drop path 0.4, layer
# decay 0.85).
_base_ = ['./upernet_unireplknet-l-22k_ade20k-640.py']
model = dict(
    backbone=dict(
        arch='XL',
        init_cfg=dict(checkpoint='checkpoints/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
