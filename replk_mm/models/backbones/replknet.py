"""RepLKNet ("Scaling Up Your Kernels to 31x31", CVPR 2022) as an MMEngine backbone.

Layout: stem (stride 4) -> [stage -> transition] x 3 -> stage. A stage is ``B_i`` pairs of
(RepLK block, ConvFFN block). Module names reproduce the authors' state-dict keys, so their
checkpoints load without renaming (see :data:`REPLKNET_KEY_MAPPING` for their classifier keys).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import load_state_dict_checked
from ...registry import MODELS
from ..layers import ConvBN, ReparamLargeKernelConv, build_norm, reparameterize_model
from ..utils import KeyMapping, checkpointed, load_pretrained

_31B_WIDTH = (128, 256, 512, 1024)
_BLOCKS = (2, 2, 18, 2)


def _arch(kernels: Sequence[int], channels: Sequence[int] = _31B_WIDTH,
          small_kernel: Optional[int] = 5, dw_ratio: float = 1) -> dict:
    return dict(large_kernel_sizes=tuple(kernels), layers=_BLOCKS, channels=tuple(channels),
                small_kernel=small_kernel, dw_ratio=dw_ratio, ffn_ratio=4)


ARCH_SETTINGS: Dict[str, dict] = {
    '31B': _arch((31, 29, 27, 13)),
    '31L': _arch((31, 29, 27, 13), (192, 384, 768, 1536)),
    'XL': _arch((27, 27, 27, 13), (256, 512, 1024, 2048), small_kernel=None, dw_ratio=1.5),
    # The paper's kernel-size study (Table 5) at 31B width; a 3x3 kernel has no 5x5 branch.
    '3-3-3-3': _arch((3, 3, 3, 3), small_kernel=None),
    '7-7-7-7': _arch((7, 7, 7, 7)),
    '13-13-13-13': _arch((13, 13, 13, 13)),
    '25-25-25-13': _arch((25, 25, 25, 13)),
    '31-29-27-13': _arch((31, 29, 27, 13)),
}
_ARCH_KEYS = ('large_kernel_sizes', 'layers', 'channels', 'small_kernel', 'dw_ratio', 'ffn_ratio')

# The authors' ImageNet classifier: ``norm`` is a BN on the last stage (our ``stages.3.norm`` with
# norm_intermediate_features and out_indices=(3,)); ``head`` is the linear classifier. Downstream
# backbones have no such norm: there it is left out with an INFO line.
REPLKNET_KEY_MAPPING = KeyMapping(
    renames=(('norm.', 'stages.3.norm.'), ), drops=('head.', ),
    optional=(('stages.3.norm.', "the classifier's final norm, which this backbone does not have "
               '(no norm_intermediate_features on stage 3, as in every downstream model); '
               'expected'), ))


def arch_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> dict:
    """The arch dict of a RepLKNet backbone state dict (authors' key names), from its shapes."""
    stage_ids = sorted({int(k.split('.')[1]) for k in state_dict if k.startswith('stages.')})
    if not stage_ids or 'stem.0.conv.weight' not in state_dict:
        raise KeyError('not a RepLKNet state dict: no stem.0.conv.weight / stages.* keys')
    arch: dict = dict(large_kernel_sizes=[], layers=[], channels=[], small_kernel=None)
    for i in stage_ids:
        prefix = f'stages.{i}.blocks.'
        blocks = {int(k[len(prefix):].split('.')[0]) for k in state_dict if k.startswith(prefix)}
        lk = f'{prefix}0.large_kernel.'
        kernel = state_dict.get(lk + 'lkb_origin.conv.weight', state_dict.get(lk + 'lkb_reparam.weight'))
        if kernel is None:
            raise KeyError(f'no large kernel for stage {i} ({lk}lkb_origin.conv.weight or '
                           f'{lk}lkb_reparam.weight)')
        small = state_dict.get(lk + 'small_conv.conv.weight')
        if small is not None:
            arch['small_kernel'] = small.shape[-1]
        channels = state_dict[f'{prefix}0.pw2.conv.weight'].shape[0]
        arch['large_kernel_sizes'].append(kernel.shape[-1])
        arch['layers'].append(len(blocks) // 2)
        arch['channels'].append(channels)
        arch['dw_ratio'] = kernel.shape[0] / channels
        arch['ffn_ratio'] = state_dict[f'{prefix}1.pw1.conv.weight'].shape[0] / channels
    return arch


class RepLKBlock(nn.Module):
    """``x + DropPath(BN(PW2(act(LK(act(BN(PW1(BN(x)))))))))``, (N, C, H, W) -> (N, C, H, W).

    Args:
        channels: C.
        dw_channels: channels of the large-kernel conv (C * dw_ratio).
        kernel_size: the large kernel K.
        small_kernel: the parallel small kernel, or None.
        drop_path: stochastic-depth rate of the residual branch.
        norm_cfg: norm config of every norm layer.
        act_cfg: activation after PW1 and after the large kernel.
        deploy: build the large kernel in its fused form.
    """

    def __init__(self, channels: int, dw_channels: int, kernel_size: int,
                 small_kernel: Optional[int], drop_path: float, norm_cfg: dict,
                 act_cfg: dict, deploy: bool = False) -> None:
        super().__init__()
        self.prelkb_bn = build_norm(norm_cfg, channels)
        self.pw1 = ConvBN(channels, dw_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.large_kernel = ReparamLargeKernelConv(
            dw_channels, kernel_size, small_kernel, norm_cfg=norm_cfg, deploy=deploy)
        self.lk_nonlinear = build_activation_layer(act_cfg)
        self.pw2 = ConvBN(dw_channels, channels, 1, norm_cfg=norm_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw1(self.prelkb_bn(x))
        out = self.pw2(self.lk_nonlinear(self.large_kernel(out)))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    """``x + DropPath(BN(PW2(GELU(BN(PW1(BN(x)))))))``, (N, C, H, W) -> (N, C, H, W).

    Args:
        channels: C.
        hidden_channels: C * ffn_ratio.
        drop_path: stochastic-depth rate of the residual branch.
        norm_cfg: norm config of every norm layer.
        act_cfg: the hidden activation (GELU in the paper).
    """

    def __init__(self, channels: int, hidden_channels: int, drop_path: float,
                 norm_cfg: dict, act_cfg: dict) -> None:
        super().__init__()
        self.preffn_bn = build_norm(norm_cfg, channels)
        # the activation sits in pw1, so it can run fused into pw1's batch norm
        self.pw1 = ConvBN(channels, hidden_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.pw2 = ConvBN(hidden_channels, channels, 1, norm_cfg=norm_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.pw1(self.preffn_bn(x)))
        return x + self.drop_path(out)


class RepLKNetStage(nn.Module):
    """``blocks`` (RepLK, ConvFFN, RepLK, ...) and an optional output ``norm``."""

    def __init__(self, blocks: List[nn.Module], norm: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if norm is not None:
            self.norm = norm


def _run(module: nn.Module, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    return checkpointed(module, x) if with_cp else module(x)


@MODELS.register_module()
class RepLKNet(BaseModule):
    """RepLKNet backbone: returns the features of the stages in ``out_indices``.

    Args:
        arch: a preset (``'31B'``, ``'31L'``, ``'XL'``, or the kernel-size study ``'3-3-3-3'``,
            ``'7-7-7-7'``, ``'13-13-13-13'``, ``'25-25-25-13'``, ``'31-29-27-13'``) or a dict with
            ``large_kernel_sizes``, ``layers`` (pairs of blocks per stage), ``channels`` and
            optionally ``small_kernel`` (default 5, None for none), ``dw_ratio`` (1), ``ffn_ratio`` (4).
        in_channels: input image channels.
        out_indices: stages whose features are returned, increasing; negative counts from the end.
        drop_path_rate: stochastic depth of the last block pair, rising linearly from 0 over all
            pairs (the authors': a RepLK block and its ConvFFN share one rate).
        norm_cfg: norm config of every norm layer (BN, SyncBN, GN, ...).
        act_cfg: the activation of the stem, transitions and RepLK blocks (ReLU).
        ffn_act_cfg: the activation of the ConvFFN blocks (GELU).
        norm_intermediate_features: add a norm (``stages.{i}.norm``) on each output stage.
        frozen_stages: -1 freezes nothing; ``i >= 0`` freezes the stem, stages ``0..i-1`` and the
            transitions leading into them (eval mode, no gradient).
        norm_eval: keep every norm layer in eval mode during training.
        with_cp: activation checkpointing per block (:func:`~replk_mm.models.utils.checkpointed`).
        deploy: build the re-parameterized (fused) form, e.g. to load a deploy checkpoint.
        init_cfg: MMEngine init config; ``dict(type='Pretrained', checkpoint=PATH)`` loads the
            authors', mmpretrain's or this package's checkpoints, training or deploy form.

    Input ``(N, in_channels, H, W)``; output a tuple, stage ``i`` giving
    ``(N, channels[i], H / 2**(i + 2), W / 2**(i + 2))``.
    """

    arch_settings = ARCH_SETTINGS

    def __init__(self,
                 arch: Union[str, dict] = '31B',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.3,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 ffn_act_cfg: dict = dict(type='GELU'),
                 norm_intermediate_features: bool = False,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = self._parse_arch(arch)
        num_stages = len(self.arch['layers'])
        self.out_indices = self._parse_out_indices(out_indices, num_stages)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self._build_args = dict(
            arch=copy.deepcopy(self.arch), in_channels=in_channels, out_indices=self.out_indices,
            norm_cfg=copy.deepcopy(norm_cfg), act_cfg=copy.deepcopy(act_cfg),
            ffn_act_cfg=copy.deepcopy(ffn_act_cfg),
            norm_intermediate_features=norm_intermediate_features)
        self.num_stages = num_stages
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        channels, layers = self.arch['channels'], self.arch['layers']
        width = channels[0]
        self.stem = nn.ModuleList([
            ConvBN(in_channels, width, 3, stride=2, norm_cfg=norm_cfg, act_cfg=act_cfg),
            # the stride-1 depth-wise 3x3 (on 112x112 at 224 input) through the DW entry point
            ConvBN(width, width, 3, groups=width, norm_cfg=norm_cfg, act_cfg=act_cfg, dw_op=True),
            ConvBN(width, width, 1, norm_cfg=norm_cfg, act_cfg=act_cfg),
            ConvBN(width, width, 3, stride=2, groups=width, norm_cfg=norm_cfg, act_cfg=act_cfg),
        ])
        rates = torch.linspace(0, drop_path_rate, sum(layers), device='cpu').tolist()
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, (c, num_pairs) in enumerate(zip(channels, layers)):
            blocks = []
            for rate in rates[sum(layers[:i]):sum(layers[:i + 1])]:
                blocks.append(RepLKBlock(
                    c, int(c * self.arch['dw_ratio']), self.arch['large_kernel_sizes'][i],
                    self.arch['small_kernel'], rate, norm_cfg, act_cfg, deploy=deploy))
                blocks.append(ConvFFN(c, int(c * self.arch['ffn_ratio']), rate, norm_cfg,
                                      ffn_act_cfg))
            norm = None
            if norm_intermediate_features and i in self.out_indices:
                norm = build_norm(norm_cfg, c)
            self.stages.append(RepLKNetStage(blocks, norm))
            if i < num_stages - 1:
                self.transitions.append(nn.Sequential(
                    ConvBN(c, channels[i + 1], 1, norm_cfg=norm_cfg, act_cfg=act_cfg),
                    ConvBN(channels[i + 1], channels[i + 1], 3, stride=2, groups=channels[i + 1],
                           norm_cfg=norm_cfg, act_cfg=act_cfg)))
        self._freeze_stages()

    @staticmethod
    def _parse_arch(arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'unknown RepLKNet arch {arch!r}; choose one of '
                                 f'{sorted(ARCH_SETTINGS)} or pass a dict with keys {_ARCH_KEYS}')
            return copy.deepcopy(ARCH_SETTINGS[arch])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
        unknown = set(arch) - set(_ARCH_KEYS)
        missing = {'large_kernel_sizes', 'layers', 'channels'} - set(arch)
        if unknown or missing:
            raise ValueError(f'bad RepLKNet arch dict: unknown keys {sorted(unknown)}, missing keys '
                             f'{sorted(missing)}; the keys are {_ARCH_KEYS}')
        arch = dict(dict(small_kernel=5, dw_ratio=1, ffn_ratio=4), **copy.deepcopy(arch))
        lengths = {k: len(arch[k]) for k in ('large_kernel_sizes', 'layers', 'channels')}
        if len(set(lengths.values())) != 1:
            raise ValueError(f'arch: large_kernel_sizes, layers and channels need one entry per '
                             f'stage, got lengths {lengths}')
        for i, k in enumerate(arch['large_kernel_sizes']):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f'arch: large kernel sizes must be positive odd integers, got '
                                 f'{k} for stage {i}; use an odd size like {k + 1 if isinstance(k, int) else 31}')
            small = arch['small_kernel']
            if small is not None and small > k:
                raise ValueError(f'arch: small_kernel={small} is larger than the large kernel {k} '
                                 f'of stage {i}; use small_kernel=None or an odd size <= {k}')
        small = arch['small_kernel']
        if small is not None and (not isinstance(small, int) or small < 1 or small % 2 == 0):
            raise ValueError(f'arch: small_kernel must be a positive odd integer or None, got {small}')
        return arch

    @staticmethod
    def _parse_out_indices(out_indices: Sequence[int], num_stages: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        indices = tuple(i + num_stages if i < 0 else i for i in out_indices)
        if (not indices or any(not 0 <= i < num_stages for i in indices)
                or list(indices) != sorted(set(indices))):
            raise ValueError(f'out_indices must be increasing stage indices in [0, {num_stages}) '
                             f'(or negative from the end), got {tuple(out_indices)}')
        return indices

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(N, C_in, H, W)`` -> one ``(N, C_i, H / 2**(i+2), W / 2**(i+2))`` per output stage."""
        x = self.stem[0](x)
        for layer in self.stem[1:]:
            x = _run(layer, x, self.with_cp)
        outs = []
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                x = _run(block, x, self.with_cp)
            if i in self.out_indices:
                outs.append(stage.norm(x) if hasattr(stage, 'norm') else x)
            if i < self.num_stages - 1:
                x = self.transitions[i](x)
        return tuple(outs)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return ([self.stem] + list(self.stages[:self.frozen_stages]) +
                list(self.transitions[:max(self.frozen_stages - 1, 0)]))

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'RepLKNet':
        """Set train/eval mode; frozen parts and (with ``norm_eval``) all norms stay in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                    m.eval()
        return self

    @property
    def deployed(self) -> bool:
        """Whether the large kernels are in their fused (deploy) form."""
        return all(m.deployed for m in self.modules() if isinstance(m, ReparamLargeKernelConv))

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` in any supported format;
        any other init_cfg is MMEngine's."""
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        if 'checkpoint' not in cfg:
            raise KeyError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH_OR_URL")
        logger = MMLogger.get_current_instance()
        logger.info(f'RepLKNet: loading pretrained weights from {cfg["checkpoint"]}')
        load_pretrained(self, cfg['checkpoint'], REPLKNET_KEY_MAPPING,
                        prefix=cfg.get('prefix'), convert=self._match_form, logger=logger)
        self._is_init = True

    def _match_form(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Bring a training- or deploy-form state dict to this model's form.

        A training-form checkpoint for a deploy-form model is fused by building the training form,
        loading it and re-parameterizing it. A deploy-form checkpoint cannot be split back into
        its branches: loading one into a training-form model is an error.
        """
        ckpt_deploy = any('.lkb_reparam.' in k for k in state_dict)
        ckpt_train = any('.lkb_origin.' in k for k in state_dict)
        if ckpt_deploy and not self.deployed:
            raise ValueError(
                'the checkpoint is in deploy form (large_kernel.lkb_reparam.* keys) but the model '
                'is in training form; build the backbone with deploy=True to load it (a fused '
                'kernel cannot be split back into its branches)')
        if not (ckpt_train and self.deployed):
            return state_dict
        logger = MMLogger.get_current_instance()
        logger.info('RepLKNet: re-parameterizing the training-form checkpoint for deploy=True')
        train_model = RepLKNet(**self._build_args, deploy=False, drop_path_rate=0.0)
        load_state_dict_checked(train_model, state_dict, source='checkpoint', logger=logger)
        fused = reparameterize_model(train_model.eval()).state_dict()
        return {k: v for k, v in fused.items() if k in state_dict or '.lkb_reparam.' in k}
