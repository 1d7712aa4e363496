# upernet_unireplknet-t_ade20k, re-parameterized backbone (deploy=True):
# evaluates checkpoints converted by tools/deploy.py.
_base_ = ['./upernet_unireplknet-t_ade20k.py']
model = dict(backbone=dict(deploy=True, init_cfg=None))
