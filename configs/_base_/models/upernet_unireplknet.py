# UperNet on UniRepLKNet (the authors' segmentation model): upernet_replknet.py's heads on a
# UniRepLKNet with SyncBN; each config sets the arch, drop path, heads' widths and weights.
_base_ = ['./upernet_replknet.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='replk_mm.UniRepLKNet',
        arch='T',
        norm_cfg=dict(type='SyncBN', requires_grad=True)))
