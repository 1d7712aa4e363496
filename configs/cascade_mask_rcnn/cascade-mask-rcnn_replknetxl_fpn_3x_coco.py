# Cascade Mask R-CNN + RepLKNet-XL (MegData-73M weights), COCO 3x, drop path 0.5. Paper: 55.5 box
# AP. XL was pre-trained with mean = std = 127.5 and normalises its output stages.
_base_ = ['./cascade-mask-rcnn_replknet31b_fpn_3x_coco.py']
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(arch='XL', drop_path_rate=0.5, norm_intermediate_features=True,
                  init_cfg=dict(checkpoint='checkpoints/RepLKNet-XL_MegData73M_pretrain.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
