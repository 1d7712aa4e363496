"""Convert a RepLKNet or UniRepLKNet checkpoint (the authors' releases, mmpretrain's, or this
package's; training or deploy form) into a bare backbone or an mmpretrain ImageClassifier checkpoint.

    python tools/convert_checkpoint.py SRC DST [--to backbone|classifier] [--deploy]

``--to backbone`` (default) writes the backbone's keys (the authors' names, ``stages.3.norm.*`` for
their classifier BN): load it with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
``--to classifier`` writes ``backbone.*`` + ``head.fc.*``: load it with ``load_from`` into the
configs of ``configs/replknet/`` / ``configs/unireplknet/`` (or mmpretrain's own RepLKNet configs).
``--deploy`` fuses the large kernels first (the architecture is read from the checkpoint's shapes).
A UniRepLKNet checkpoint is recognised by its ``downsample_layers.*`` keys; the authors' classifier
``norm.*`` becomes the backbone's ``norm3.*`` (applied after pooling, ``gap_before_final_norm``).
"""
import argparse
import os
from typing import Dict

import torch

from replk_mm.checkpoint import extract_state_dict, load_checkpoint_file, load_state_dict_checked
from replk_mm.deploy import reparameterize_model
from replk_mm.deploy.atomic import atomic_outputs
from replk_mm.engine.cli import run_tool
from replk_mm.models import RepLKNet
from replk_mm.models.backbones.replknet import REPLKNET_KEY_MAPPING, arch_from_state_dict
from replk_mm.models.backbones.unireplknet import reparameterize_state_dict
from replk_mm.models.utils import backbone_state_dict
from replk_mm.models.utils import unireplknet_keys as uni

StateDict = Dict[str, torch.Tensor]


def head_state_dict(state_dict: StateDict) -> StateDict:
    """The linear classifier as mmpretrain's ``head.fc.*`` (from ``head.*`` or ``head.fc.*``)."""
    head = {}
    for key, value in state_dict.items():
        if key.startswith('head.fc.'):
            head[key] = value
        elif key.startswith('head.'):
            head['head.fc.' + key[len('head.'):]] = value
    return head


def fuse(backbone: StateDict) -> StateDict:
    """Re-parameterize a training-form backbone state dict (a deploy-form one is returned as is)."""
    if not any('.lkb_origin.' in k for k in backbone):
        return backbone
    last = len({k.split('.')[1] for k in backbone if k.startswith('stages.')}) - 1
    with_norm = any(k.startswith(f'stages.{last}.norm.') for k in backbone)
    model = RepLKNet(arch_from_state_dict(backbone), out_indices=(last, ),
                     norm_intermediate_features=with_norm, drop_path_rate=0.0)
    load_state_dict_checked(model, backbone, strict=True, source='the checkpoint')
    return reparameterize_model(model.eval()).state_dict()


def fuse_unireplknet(backbone: StateDict) -> StateDict:
    """Re-parameterize a training-form UniRepLKNet backbone state dict (deploy form: as is)."""
    if uni.checkpoint_form(backbone) != 'train':
        return backbone
    norms = tuple(i for i in range(4) if f'norm{i}.weight' in backbone)
    with_scale = any(k.endswith('.gamma') and v.dim() == 1 for k, v in backbone.items())
    return reparameterize_state_dict(
        backbone, arch=uni.arch_from_state_dict(backbone), out_indices=norms or (3, ),
        layer_scale_init_value=1e-6 if with_scale else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='input checkpoint')
    parser.add_argument('dst', help='output checkpoint (.pth)')
    parser.add_argument('--to', choices=('backbone', 'classifier'), default='backbone')
    parser.add_argument('--deploy', action='store_true', help='fuse the large kernels')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle SRC without the safe allow-list (only for files you trust)')
    args = parser.parse_args()

    state_dict = extract_state_dict(
        load_checkpoint_file(args.src, trust=True if args.trust_checkpoint else None))
    if uni.is_unireplknet(state_dict):
        backbone = backbone_state_dict(state_dict, uni.unireplknet_key_mapping(final_norm=True))
        arch = uni.arch_from_state_dict(backbone)
        if args.deploy:
            backbone = fuse_unireplknet(backbone)
        deploy = uni.checkpoint_form(backbone) == 'deploy'
    else:
        backbone = backbone_state_dict(state_dict, REPLKNET_KEY_MAPPING)
        arch = arch_from_state_dict(backbone)
        if args.deploy:
            backbone = fuse(backbone)
        deploy = any('.lkb_reparam.' in k for k in backbone)
    out = backbone
    if args.to == 'classifier':
        head = head_state_dict(state_dict)
        if not head:
            raise SystemExit(f'{args.src} has no classifier head (head.* or head.fc.*); '
                             'convert it with --to backbone')
        out = {**{'backbone.' + k: v for k, v in backbone.items()}, **head}
    meta = dict(source=os.path.basename(args.src), format=args.to, deploy=deploy, arch=arch)
    with atomic_outputs([args.dst], force=True) as (tmp, ):  # overwrites, as it always did
        torch.save(dict(state_dict=out, meta=meta), tmp)
    print(f'{args.src} -> {args.dst}: {len(out)} tensors, {args.to}, '
          f'{"deploy" if deploy else "training"} form, arch {arch}')


if __name__ == '__main__':
    run_tool(main)
