# UperNet + UniRepLKNet-T (ImageNet-1K weights), ADE20K 512x512, 160k x 16: the authors' recipe
# (AdamW 1e-4, no layer decay, 1500-iteration warm-up, drop path 0.2).
_base_ = [
    '../_base_/models/upernet_unireplknet.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/seg_unireplknet_160k.py', '../_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='T',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/unireplknet_t_in1k_224_acc83.21.pth')),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=1.0, num_layers=9))
