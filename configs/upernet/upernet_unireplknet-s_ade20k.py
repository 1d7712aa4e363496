# UperNet + UniRepLKNet-S (ImageNet-1K weights), ADE20K 512x512, 160k x 16: the authors' recipe
# (AdamW 1e-4, layer decay 0.9, 1500-iteration warm-up, drop path 0.3, checkpointing).
_base_ = ['./upernet_unireplknet-t_ade20k.py']
model = dict(
    backbone=dict(
        arch='S', drop_path_rate=0.3, with_cp=True,
        init_cfg=dict(checkpoint='checkpoints/unireplknet_s_in1k_224_acc83.91.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, num_layers=12))
