# CPU demo: FCOS (narrow head) on a tiny RepLKNet on the synthetic COCO data, boxes only.
_base_ = [
    '../_base_/models/fcos_replknet_fpn.py', '../_base_/datasets/demo_coco_detection.py',
    '../_base_/schedules/demo_det.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, large_kernel_sizes=(13, 11, 9, 7), layers=(1, 1, 2, 1),
                  channels=(16, 32, 64, 128)),
        drop_path_rate=0.1,
        with_cp=False),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, start_level=0,
              add_extra_convs='on_output', num_outs=5),
    bbox_head=dict(num_classes=3, in_channels=64, feat_channels=64, strides=[4, 8, 16, 32, 64],
                   regress_ranges=((-1, 12), (12, 24), (24, 48), (48, 96), (96, 1e8))))
