# CPU demo: Cascade Mask R-CNN on a tiny RepLKNet on the synthetic COCO data (boxes and masks).
# `make demo` trains it; tools/test.py prints its box and mask mAP. Cheaper than the 3x recipe so
# that it trains in minutes on two cores (on the CPU the RoIAlign of the sampled RoIs, forward and
# backward, costs more than the whole backbone): mmdet's standard two-fc box heads instead of
# 4conv1fc, 64 sampled RoIs per image and stage (scenes hold 1-4 objects) instead of 512, 100
# proposals, 32-channel FPN, a 2-conv mask head.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_replknet_fpn.py',
    '../_base_/datasets/demo_coco_instance.py', '../_base_/schedules/demo_det.py',
    '../_base_/default_runtime.py'
]
bbox_head = dict(
    type='ConvFCBBoxHead', num_shared_convs=0, num_shared_fcs=2, in_channels=32,
    fc_out_channels=256, roi_feat_size=7, num_classes=3, reg_class_agnostic=False,
    reg_decoded_bbox=True,
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
coder = dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.])
rcnn_stages = [
    dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                       match_low_quality=False, ignore_iof_thr=-1),
         sampler=dict(type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                      add_gt_as_proposals=True),
         mask_size=28, pos_weight=-1, debug=False)
    for iou in (0.5, 0.6, 0.7)
]
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, large_kernel_sizes=(13, 11, 9, 7), layers=(1, 1, 2, 1),
                  channels=(16, 32, 64, 128)),
        drop_path_rate=0.1,
        with_cp=False),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32,
                  anchor_generator=dict(scales=[4], strides=[4, 8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=[
            dict(bbox_head, bbox_coder=dict(coder, target_stds=[0.1, 0.1, 0.2, 0.2])),
            dict(bbox_head, bbox_coder=dict(coder, target_stds=[0.05, 0.05, 0.1, 0.1])),
            dict(bbox_head, bbox_coder=dict(coder, target_stds=[0.033, 0.033, 0.067, 0.067])),
        ],
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_classes=3, in_channels=32, num_convs=2, conv_out_channels=32)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=100), rcnn=rcnn_stages),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))
# 4 epochs, the learning rate divided by 10 for the last (the detection demo schedule has 6 epochs):
# the cascade learns the synthetic shapes faster than FCOS and costs twice as much per iteration.
max_epochs = 4
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[3], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(checkpoint=dict(interval=max_epochs))
