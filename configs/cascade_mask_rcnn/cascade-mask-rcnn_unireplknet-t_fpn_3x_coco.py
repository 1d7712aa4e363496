# Cascade Mask R-CNN + UniRepLKNet-T (ImageNet-1K weights), COCO 3x multi-scale, 16 images per
# iteration: the authors' recipe (AdamW 1e-4, layer decay 0.8, drop path 0.3, checkpointing).
_base_ = ['./cascade-mask-rcnn_replknet31b_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='replk_mm.UniRepLKNet',
        arch='T',
        drop_path_rate=0.3,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        with_cp=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/unireplknet_t_in1k_224_acc83.21.pth')),
    neck=dict(in_channels=[80, 160, 320, 640]))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='replk_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.8, num_layers=12))
