"""UniRepLKNet (CVPR 2024) as an OpenMMLab backbone; module names reproduce the authors' keys."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from replk_mm.checkpoint import load_state_dict_checked
from replk_mm.registry import MODELS
from ..layers.layer_norm import LayerNorm2d
from ..layers.reparam import reparameterize_model
from ..layers.unireplknet_block import UniRepLKNetBlock
from ..utils.ckpt_convert import load_pretrained
from ..utils.unireplknet_keys import checkpoint_form, unireplknet_key_mapping

KernelSizes = Tuple[Tuple[int, ...], ...]
# The authors' initialisation: truncated normal (std 0.02) for every conv and linear, zero biases.
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer=['Conv2d', 'Linear', 'DepthwiseConv2d'], std=.02, bias=0.)
]
# Parameters that only the deploy form has.
_FUSED_BIASES = ('dwconv.lk_origin.bias', 'dwconv.bias', 'pwconv2.0.bias')


def _kernels(*stages: Sequence[int]) -> KernelSizes:
    return tuple(tuple(s) for s in stages)


_AFP_KERNELS = _kernels((3, 3), (13, 13), (13, ) * 6, (13, 13))
_N_KERNELS = _kernels((3, 3), (13, 13), (13, ) * 8, (13, 13))
_T_KERNELS = _kernels((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13))
_SBLXL_KERNELS = _kernels((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13))

# The authors' default kernel sizes for a given depth configuration.
DEFAULT_KERNEL_SIZES: Dict[Tuple[int, ...], KernelSizes] = {
    (2, 2, 6, 2): _AFP_KERNELS,
    (2, 2, 8, 2): _N_KERNELS,
    (3, 3, 18, 3): _T_KERNELS,
    (3, 3, 27, 3): _SBLXL_KERNELS,
}

ARCH_SETTINGS: Dict[str, dict] = {
    'A': dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    'F': dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    'P': dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    'N': dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    'T': dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640)),
    'S': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    'B': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    'L': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    'XL': dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
}
ARCH_ALIASES = {
    'atto': 'A', 'femto': 'F', 'pico': 'P', 'nano': 'N', 'tiny': 'T', 'small': 'S', 'base': 'B',
    'large': 'L', 'xlarge': 'XL'
}


def resolve_arch(arch: Union[str, dict]) -> Tuple[Tuple[int, ...], Tuple[int, ...], KernelSizes]:
    """``(depths, dims, kernel_sizes)`` of a preset name or a custom dict.

    A custom dict has ``depths`` and ``dims`` (4 entries each) and optionally ``kernel_sizes`` (one
    tuple per stage, one odd kernel size per block); without it the authors' default for the depths
    is used.
    """
    if isinstance(arch, str):
        key = ARCH_ALIASES.get(arch.lower(), arch.upper())
        if key not in ARCH_SETTINGS:
            raise ValueError(f'unknown UniRepLKNet arch {arch!r}; choose one of '
                             f'{list(ARCH_SETTINGS)} (or {list(ARCH_ALIASES)}) or pass a dict '
                             'with depths, dims and kernel_sizes')
        arch = ARCH_SETTINGS[key]
    if not isinstance(arch, dict) or not {'depths', 'dims'} <= set(arch):
        raise ValueError(f'a custom UniRepLKNet arch is a dict with depths, dims and optionally '
                         f'kernel_sizes, got {arch!r}')
    unknown = set(arch) - {'depths', 'dims', 'kernel_sizes'}
    if unknown:
        raise ValueError(f'unknown keys {sorted(unknown)} in the arch dict; allowed: depths, dims, '
                         'kernel_sizes')
    depths, dims = tuple(arch['depths']), tuple(arch['dims'])
    if len(depths) != 4 or len(dims) != 4:
        raise ValueError(f'depths and dims need 4 entries (one per stage), got {depths}, {dims}')
    kernel_sizes = arch.get('kernel_sizes')
    if kernel_sizes is None:
        if depths not in DEFAULT_KERNEL_SIZES:
            raise ValueError(
                f'no default kernel sizes for depths {depths} (defaults exist for '
                f'{list(DEFAULT_KERNEL_SIZES)}); give kernel_sizes, one tuple per stage, e.g. '
                '((3, 3), (13, 13), (13, 13, 13, 13, 13, 13), (13, 13))')
        kernel_sizes = DEFAULT_KERNEL_SIZES[depths]
    kernel_sizes = _kernels(*kernel_sizes)
    if len(kernel_sizes) != 4 or any(len(k) != d for k, d in zip(kernel_sizes, depths)):
        raise ValueError(f'kernel_sizes must give one kernel size per block: depths {depths}, got '
                         f'{tuple(len(k) for k in kernel_sizes)} kernel sizes per stage')
    return depths, dims, kernel_sizes


@MODELS.register_module()
class UniRepLKNet(BaseModule):
    """UniRepLKNet backbone (Ding et al., CVPR 2024).

    ``(N, C_in, H, W)`` -> a tuple with, for each ``i`` in ``out_indices``, stage ``i``'s features
    ``(N, dims[i], H / 2^(i+2), W / 2^(i+2))`` after the channels-first LayerNorm ``norm{i}``, or
    ``(N, dims[i])`` with ``gap_before_final_norm`` (pool, then norm: the authors' classifier).

    Args:
        arch: preset ``'A' 'F' 'P' 'N' 'T' 'S' 'B' 'L' 'XL'`` (or ``'atto'`` ... ``'xlarge'``), or
            ``dict(depths=..., dims=..., kernel_sizes=...)``.
        in_channels: input channels.
        out_indices: stages whose outputs are returned (each gets its own ``norm{i}``).
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
        layer_scale_init_value: initial layer scale; 0 or None disables it.
        norm_cfg: the blocks' batch norms, ``dict(type='BN')`` or ``dict(type='SyncBN')``.
        frozen_stages: -1 freezes nothing; k >= 0 freezes the stem and stages 0..k-1 with their
            downsampling layers and output norms (and keeps them in eval mode).
        norm_eval: keep every batch norm in eval mode while training (frozen statistics).
        with_cp: recompute each block in the backward pass (:func:`~replk_mm.models.utils.checkpointed`).
        deploy: build the re-parameterized (inference) form.
        gap_before_final_norm: global-average-pool before ``norm{i}`` (classification).
        init_cfg: MMEngine init config (default: the authors' truncated normal, std 0.02, for
            convs and linears). ``dict(type='Pretrained', checkpoint=..., prefix=None)``
            loads the authors' checkpoints (ImageNet or downstream, training or deploy form,
            wrapped or not) and OpenMMLab ones; a training-form checkpoint loads into a
            ``deploy=True`` model by fusing it on the way.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'T',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: Optional[float] = 1e-6,
                 norm_cfg: Optional[dict] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 gap_before_final_norm: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        self._build_args = dict(
            arch=copy.deepcopy(arch), in_channels=in_channels, out_indices=out_indices,
            layer_scale_init_value=layer_scale_init_value, norm_cfg=norm_cfg,
            gap_before_final_norm=gap_before_final_norm)
        init_cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg] if init_cfg else []
        pretrained = [c for c in init_cfgs if c.get('type') == 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError('init_cfg has more than one Pretrained entry; keep one')
        others = [c for c in init_cfgs if c.get('type') != 'Pretrained']
        super().__init__(init_cfg=others or copy.deepcopy(DEFAULT_INIT_CFG))
        self.pretrained_cfg = pretrained[0] if pretrained else None

        self.depths, self.dims, self.kernel_sizes = resolve_arch(arch)
        out_indices = (out_indices, ) if isinstance(out_indices, int) else tuple(out_indices)
        if not out_indices or any(not -4 <= i < 4 for i in out_indices):
            raise ValueError(f'out_indices must name stages 0..3 (or -4..-1), got {out_indices}')
        out_indices = tuple(i % 4 for i in out_indices)
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be in -1..4, got {frozen_stages}')
        self.out_indices = tuple(sorted(set(out_indices)))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.gap_before_final_norm = gap_before_final_norm

        dims = self.dims
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_channels, dims[0] // 2, 3, stride=2, padding=1),
                LayerNorm2d(dims[0] // 2), nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1), LayerNorm2d(dims[0]))
        ])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1),
                    LayerNorm2d(dims[i + 1])))

        rates = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (depth, kernels) in enumerate(zip(self.depths, self.kernel_sizes)):
            first = sum(self.depths[:i])
            self.stages.append(
                nn.Sequential(*[
                    UniRepLKNetBlock(
                        dims[i], kernels[j], drop_path=rates[first + j],
                        layer_scale_init_value=layer_scale_init_value, norm_cfg=norm_cfg,
                        with_cp=with_cp, deploy=deploy) for j in range(depth)
                ]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(dims[i]))
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                outs.append(norm(x.mean((-2, -1))) if self.gap_before_final_norm else norm(x))
        return tuple(outs)

    @property
    def deployed(self) -> bool:
        """Whether every block is in its re-parameterized (deploy) form."""
        return all(block.deployed for stage in self.stages for block in stage)

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        modules = [self.downsample_layers[0]]
        for i in range(self.frozen_stages):
            modules += [self.downsample_layers[i], self.stages[i]]
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        for module in modules:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'UniRepLKNet':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise lr decay (the authors' ConvNeXt-style grouping).

        Stem -> 0; stages 0 / 1 and the downsampling into them -> 1 / 2; stage 2 in groups of three
        blocks from 3; stage 3 -> the last id; anything outside the backbone (head) after it.

        Returns:
            ``(layer_id, num_layers)`` as mmpretrain's ``LearningRateDecayOptimWrapperConstructor``
            expects.
        """
        max_layer_id = 12 if self.depths[2] > 9 else 6
        if not param_name.startswith(prefix):
            return max_layer_id + 1, max_layer_id + 2
        parts = param_name[len(prefix):].split('.')
        if parts[0] in ('downsample_layers', 'stages'):
            stage = int(parts[1])
            if stage == 3:
                layer_id = max_layer_id
            elif parts[0] == 'downsample_layers':
                layer_id = 0 if stage == 0 else stage + 1
            else:
                layer_id = stage + 1 if stage < 2 else 3 + int(parts[2]) // 3
        else:  # the output norms
            layer_id = max_layer_id + 1
        return layer_id, max_layer_id + 2

    def init_weights(self) -> None:
        """``init_cfg`` (by default the authors' truncated normal), then the Pretrained weights."""
        if self.is_init:
            super().init_weights()  # MMEngine warns about the repeated call
            return
        super().init_weights()
        if self.pretrained_cfg is not None:
            self.load_pretrained(self.pretrained_cfg['checkpoint'],
                                 prefix=self.pretrained_cfg.get('prefix'))

    def load_pretrained(self, filename: str,
                        prefix: Optional[str] = None) -> Tuple[List[str], List[str]]:
        """Load a UniRepLKNet checkpoint of any supported format; unmatched keys are reported.

        Returns:
            ``(missing_keys, unexpected_keys)``.
        """
        logger = MMLogger.get_current_instance()
        return load_pretrained(
            self, filename, unireplknet_key_mapping(self.gap_before_final_norm), prefix=prefix,
            convert=self._match_form, logger=logger)

    def _match_form(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Fuse a training-form state dict for a deploy-form model; refuse the reverse."""
        form = checkpoint_form(state_dict)
        if form == 'deploy' and not self.deployed:
            raise ValueError('the checkpoint is in deploy (re-parameterized) form but the model is '
                             'not: build the backbone with deploy=True to load it')
        if form != 'train' or not self.deployed:
            return state_dict
        MMLogger.get_current_instance().info(
            'UniRepLKNet: re-parameterizing the training-form checkpoint for deploy=True')
        return reparameterize_state_dict(state_dict, **self._build_args)


def reparameterize_state_dict(state_dict: Dict[str, torch.Tensor],
                              **build_args) -> Dict[str, torch.Tensor]:
    """The deploy form of a training-form UniRepLKNet backbone state dict.

    Builds ``UniRepLKNet(**build_args)`` in training form, loads ``state_dict`` (unmatched keys are
    reported), re-parameterizes it and returns its state dict. Keys the input lacks stay absent, so a
    later load still reports them; the fused biases are new keys.
    """
    model = UniRepLKNet(**build_args)
    load_state_dict_checked(model, state_dict, source='checkpoint',
                            logger=MMLogger.get_current_instance())
    fused = reparameterize_model(model.eval()).state_dict()
    return {k: v for k, v in fused.items() if k in state_dict or k.endswith(_FUSED_BIASES)}
