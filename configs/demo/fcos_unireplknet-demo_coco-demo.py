# CPU demo: FCOS on a tiny UniRepLKNet (LarK blocks with dilated re-param branches, SmaK blocks) on
# the synthetic COCO data, boxes only.
_base_ = ['./fcos_replknet-demo_coco-demo.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='replk_mm.UniRepLKNet',
        arch=dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
                  kernel_sizes=((3, ), (13, ), (13, 3), (11, ))),
        drop_path_rate=0.1,
        norm_cfg=dict(type='SyncBN', requires_grad=True)))
