# CPU demo: Cascade Mask R-CNN (narrow heads) on a tiny RepLKNet on the synthetic COCO data.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_replknet_fpn.py',
    '../_base_/datasets/demo_coco_instance.py', '../_base_/schedules/demo_det.py',
    '../_base_/default_runtime.py'
]
bbox_head = dict(
    type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=64,
    conv_out_channels=64, fc_out_channels=256, roi_feat_size=7, num_classes=3,
    reg_class_agnostic=False, reg_decoded_bbox=True,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
coder = dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.])
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, large_kernel_sizes=(13, 11, 9, 7), layers=(1, 1, 2, 1),
                  channels=(16, 32, 64, 128)),
        drop_path_rate=0.1,
        with_cp=False),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64,
                  anchor_generator=dict(scales=[4], strides=[4, 8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=[
            dict(bbox_head, bbox_coder=dict(coder, target_stds=[0.1, 0.1, 0.2, 0.2])),
            dict(bbox_head, bbox_coder=dict(coder, target_stds=[0.05, 0.05, 0.1, 0.1])),
            dict(bbox_head, bbox_coder=dict(coder, target_stds=[0.033, 0.033, 0.067, 0.067])),
        ],
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_classes=3, in_channels=64, conv_out_channels=64)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200)),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200)))
