"""Run a trained or deploy checkpoint on image files with the OpenMMLab inferencers.

The config's ``default_scope`` picks the inferencer: mmseg's ``MMSegInferencer`` (semantic
segmentation), mmdet's ``DetInferencer`` (detection, instance segmentation) or mmpretrain's
``ImageClassificationInferencer`` (classification). They do the pre-processing and the drawing; this
module adds the package's checked weight loading (the same one-line errors as ``tools/test.py``),
the class names of the config's dataset, and per image two outputs written atomically::

    OUT_DIR/{name}            # the input picture with the predictions drawn (same format)
    OUT_DIR/{stem}.json       # the predictions (masks as COCO run-length encoding)

Example::

    from replk_mm.apis import inference_model
    results = inference_model('configs/demo/upernet_replknet-demo_ade20k-demo.py',
                              'work_dirs/demo_seg/iter_300.pth', ['data/demo/ade20k/images/validation'],
                              out_dir='work_dirs/vis')
"""
import glob
import json
import os
import os.path as osp
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DATASETS, init_default_scope
from mmengine.utils import import_modules_from_strings
from pycocotools import mask as mask_utils

from ..checkpoint import load_state_dict_checked
from ..deploy.atomic import atomic_outputs
from ..deploy.inference import optimize_for_inference
from ..engine.cli import ToolError, checked_state_dict, load_config
from ..models.layers import use_package_batch_norm

# What a folder input contributes (explicit files and glob matches are taken as they are).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
TASKS = {'mmseg': 'segmentation', 'mmdet': 'detection', 'mmpretrain': 'classification'}


@dataclass
class ImageResult:
    """One input image: its predictions and the two files written, or why it was skipped."""
    image: str
    prediction: Optional[Dict[str, Any]] = None
    drawing: Optional[str] = None
    json: Optional[str] = None
    error: Optional[str] = None


def find_images(inputs: Sequence[str]) -> List[Tuple[str, str]]:
    """Expand files, folders (their image files, not recursive) and glob patterns.

    Returns:
        ``[(path, name)]`` in input order without repeats, ``name`` being the path relative to
        its input's folder (a file's or folder's own, a glob's fixed prefix): the output name.
        A path that exists nowhere is kept, so that it is reported like an unreadable image.

    Raises:
        ToolError: nothing found at all, or two images would write the same outputs.
    """
    found: Dict[str, str] = {}
    for item in inputs:
        if osp.isdir(item):
            names = sorted(f for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
                           and osp.isfile(osp.join(item, f)))
            pairs = [(osp.join(item, f), f) for f in names]
        elif glob.has_magic(item):
            root = item[:min(item.find(c) for c in '*?[' if c in item)]
            root = root if root.endswith(os.sep) else osp.dirname(root)
            pairs = [(p, osp.relpath(p, root or '.')) for p in
                     sorted(glob.glob(item, recursive=True)) if osp.isfile(p)]
        else:
            pairs = [(item, osp.basename(item))]
        for path, name in pairs:
            found.setdefault(osp.normpath(path), name)
    existing = [p for p in found if osp.isfile(p)]
    if not existing:
        raise ToolError(f'no input images found in {" ".join(inputs) or "(no inputs)"}: pass '
                        f'image files, folders with {"/".join(IMAGE_EXTENSIONS)} files, or glob '
                        'patterns (quoted, e.g. "data/*.jpg")')
    stems: Dict[str, str] = {}
    for path, name in found.items():
        other = stems.setdefault(osp.splitext(name)[0], path)
        if other != path:
            raise ToolError(f'{other} and {path} would both write {osp.splitext(name)[0]}.json; '
                            'run them with different --out-dir')
    return list(found.items())


def _rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO run-length encoding of an ``(H, W)`` boolean mask (``counts`` as a string)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode())


class _Task:
    """How one task's inferencer is built, run, drawn with and summarised as JSON."""
    scope = ''

    def build(self, cfg: Config, device: str) -> Any:
        raise NotImplementedError

    def set_classes(self, inferencer: Any, meta: dict) -> None:
        inferencer.model.dataset_meta = meta

    def predict(self, inferencer: Any, paths: List[str]) -> list:
        data = next(iter(inferencer.preprocess(paths, batch_size=len(paths))))
        return inferencer.forward(data)

    def draw(self, inferencer: Any, paths: List[str], samples: list,
             score_thr: float) -> List[np.ndarray]:
        """RGB pictures of ``samples`` drawn on the images at ``paths``."""
        return inferencer.visualize(paths, samples, return_vis=True)

    def to_dict(self, sample: Any, classes: Sequence[str], score_thr: float) -> Dict[str, Any]:
        raise NotImplementedError


class _Segmentation(_Task):
    scope = 'mmseg'

    def build(self, cfg: Config, device: str) -> Any:
        from mmseg.apis import MMSegInferencer
        return MMSegInferencer(cfg, device=device, scope=self.scope)

    def to_dict(self, sample: Any, classes: Sequence[str], score_thr: float) -> Dict[str, Any]:
        """One segment per predicted class: its pixel count and mask."""
        labels = sample.pred_sem_seg.data[0].cpu().numpy()
        segments = [dict(label=int(c), name=classes[c], area=int((labels == c).sum()),
                         mask=_rle(labels == c)) for c in np.unique(labels)]
        return dict(height=int(labels.shape[0]), width=int(labels.shape[1]), segments=segments)


class _Detection(_Task):
    scope = 'mmdet'

    def build(self, cfg: Config, device: str) -> Any:
        from mmdet.apis import DetInferencer
        return DetInferencer(cfg, device=device, scope=self.scope, show_progress=False)

    def set_classes(self, inferencer: Any, meta: dict) -> None:
        inferencer.model.dataset_meta = inferencer.visualizer.dataset_meta = meta

    def predict(self, inferencer: Any, paths: List[str]) -> list:
        _, data = next(iter(inferencer.preprocess(paths, batch_size=len(paths))))
        return inferencer.forward(data)

    def draw(self, inferencer: Any, paths: List[str], samples: list,
             score_thr: float) -> List[np.ndarray]:
        return inferencer.visualize(paths, samples, return_vis=True, pred_score_thr=score_thr)

    def to_dict(self, sample: Any, classes: Sequence[str], score_thr: float) -> Dict[str, Any]:
        """The instances scoring at least ``score_thr``: box (x1, y1, x2, y2), mask if any."""
        pred = sample.pred_instances
        keep = (pred.scores >= score_thr).nonzero().flatten().cpu()
        masks = pred.get('masks')
        instances = []
        for i in keep.tolist():
            label = int(pred.labels[i])
            item = dict(label=label, name=classes[label], score=float(pred.scores[i]),
                        bbox=[float(v) for v in pred.bboxes[i]])
            if masks is not None:
                item['mask'] = _rle(masks[i].cpu().numpy())
            instances.append(item)
        return dict(score_thr=score_thr, instances=instances)


class _Classification(_Task):
    scope = 'mmpretrain'

    def build(self, cfg: Config, device: str) -> Any:
        from mmpretrain.apis import ImageClassificationInferencer
        from mmpretrain.visualization import UniversalVisualizer
        inferencer = ImageClassificationInferencer(cfg, pretrained=False, device=device)
        inferencer.visualizer = UniversalVisualizer()
        return inferencer

    def set_classes(self, inferencer: Any, meta: dict) -> None:
        inferencer.classes = meta['classes']

    def draw(self, inferencer: Any, paths: List[str], samples: list,
             score_thr: float) -> List[np.ndarray]:
        return [inferencer.visualizer.visualize_cls(mmcv.imread(path, channel_order='rgb'), sample,
                                                    classes=inferencer.classes, draw_gt=False)
                for path, sample in zip(paths, samples)]

    def to_dict(self, sample: Any, classes: Sequence[str], score_thr: float) -> Dict[str, Any]:
        """The top class and every class score."""
        scores = sample.pred_score.cpu()
        label = int(scores.argmax())
        return dict(label=label, name=classes[label], score=float(scores[label]),
                    scores=[float(s) for s in scores])


_TASKS: Dict[str, _Task] = {t.scope: t for t in (_Segmentation(), _Detection(), _Classification())}


def _dataset_meta(cfg: Config) -> Dict[str, Any]:
    """Class names and palette of the config's test dataset (built lazily: no file is read)."""
    dataset_cfg = dict(cfg.test_dataloader.dataset, lazy_init=True)
    meta = DATASETS.build(dataset_cfg).metainfo
    return dict(classes=tuple(meta['classes']), palette=meta.get('palette'))


class Inferencer:
    """A config and a checkpoint (training or deploy form) ready to run on images.

    Args:
        config: config file; for a checkpoint converted by ``tools/deploy.py`` the
            ``*_deploy.py`` written beside it.
        checkpoint: checkpoint file, loaded with the package's safe loader and checked to be a
            checkpoint of the config's model (:func:`replk_mm.engine.cli.checked_state_dict`).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``...; default: CUDA when available.
        cfg_options: config overrides, as ``--cfg-options``.
        optimize: run the inference form (:func:`~replk_mm.deploy.optimize_for_inference`: the
            same predictions, faster on CPUs).

    Raises:
        ToolError: missing config, unknown task, no such device, a checkpoint that does not fit
            the config.
    """

    def __init__(self, config: str, checkpoint: str, device: Optional[str] = None,
                 cfg_options: Optional[dict] = None, optimize: bool = False) -> None:
        cfg = load_config(config, cfg_options, None, 'none')
        scope = cfg.get('default_scope')
        if scope not in _TASKS:
            raise ToolError(f'config {config} has default_scope={scope!r}; inference knows '
                            f'{", ".join(sorted(_TASKS))} (segmentation, detection, classification)')
        if cfg.get('custom_imports'):
            import_modules_from_strings(**cfg.custom_imports)
        device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if torch.device(device).type == 'cuda' and not torch.cuda.is_available():
            raise ToolError(f'device {device}: PyTorch sees no CUDA device here; use cpu')
        self.task = _TASKS[scope]
        init_default_scope(scope)
        with warnings.catch_warnings():  # "randomly initialized": the weights come next
            warnings.simplefilter('ignore')
            self.inferencer = self.task.build(cfg, device)
        model = self.inferencer.model = revert_sync_batchnorm(self.inferencer.model)
        if torch.device(device).type == 'cpu':
            use_package_batch_norm(model)
        state_dict = checked_state_dict(model, checkpoint)
        load_state_dict_checked(model, state_dict, strict=True, source=checkpoint)
        if optimize:
            optimize_for_inference(model)
        with warnings.catch_warnings():  # deprecation notes of the dataset's transforms
            warnings.simplefilter('ignore')
            meta = _dataset_meta(cfg)
        self.task.set_classes(self.inferencer, meta)
        self.classes: Tuple[str, ...] = meta['classes']
        self.kind = TASKS[scope]

    def predict(self, paths: List[str], score_thr: float = 0.3) -> Tuple[list, List[np.ndarray]]:
        """Predictions (data samples) and RGB drawings of the images at ``paths`` (one batch)."""
        samples = self.task.predict(self.inferencer, paths)
        return samples, self.task.draw(self.inferencer, paths, samples, score_thr)

    def to_dict(self, sample: Any, score_thr: float = 0.3) -> Dict[str, Any]:
        """The JSON-able predictions of one data sample."""
        return dict(task=self.kind, **self.task.to_dict(sample, self.classes, score_thr))


def _readable(path: str) -> Optional[str]:
    """Why the image at ``path`` cannot be read, or None when it decodes."""
    if not osp.isfile(path):
        return 'no such file'
    try:
        ok = mmcv.imread(path) is not None
    except Exception as err:  # a decoder error of any kind means "not an image"
        return f'not an image ({type(err).__name__}: {err})'
    return None if ok else 'not a readable image (OpenCV cannot decode it)'


def _write(out_dir: str, path: str, name: str, drawing: np.ndarray,
           prediction: Dict[str, Any]) -> ImageResult:
    """Write the drawing (input's format; PNG for one OpenCV cannot write) and the JSON."""
    stem, ext = osp.splitext(name)
    if ext.lower() not in IMAGE_EXTENSIONS[:5]:
        ext = '.png'
    picture, json_path = osp.join(out_dir, stem + ext), osp.join(out_dir, stem + '.json')
    with atomic_outputs([picture, json_path], force=True) as (tmp_picture, tmp_json):
        if not mmcv.imwrite(drawing[..., ::-1], tmp_picture):
            raise OSError(f'could not write {picture}')
        with open(tmp_json, 'w') as f:
            json.dump(dict(image=path, **prediction), f)
    return ImageResult(path, prediction, picture, json_path)


def iter_inference(inferencer: Inferencer, images: Sequence[Tuple[str, str]], out_dir: str,
                   batch_size: int = 1, score_thr: float = 0.3) -> Iterator[ImageResult]:
    """Run ``inferencer`` on ``images`` (``[(path, name)]`` as :func:`find_images` returns) in
    batches, write each image's drawing and JSON into ``out_dir``, and yield one
    :class:`ImageResult` per image in order, as soon as it is written. An unreadable image gets a
    warning naming it and a result with ``error`` set; the others go on."""
    if batch_size < 1:
        raise ToolError(f'batch size {batch_size}: use 1 or more')
    logger = MMLogger.get_current_instance()
    pending: List[Tuple[str, str]] = []

    def run_batch() -> Iterator[ImageResult]:
        paths = [p for p, _ in pending]
        samples, drawings = inferencer.predict(paths, score_thr)
        for (path, name), sample, drawing in zip(pending, samples, drawings):
            yield _write(out_dir, path, name, drawing, inferencer.to_dict(sample, score_thr))
        pending.clear()

    for path, name in images:
        problem = _readable(path)
        if problem:
            logger.warning(f'skipped {path}: {problem}')
            yield ImageResult(path, error=problem)
            continue
        pending.append((path, name))
        if len(pending) == batch_size:
            yield from run_batch()
    if pending:
        yield from run_batch()


def inference_model(config: str, checkpoint: str, inputs: Sequence[str], out_dir: str,
                    device: Optional[str] = None, batch_size: int = 1,
                    score_thr: float = 0.3, optimize: bool = False) -> List[ImageResult]:
    """Predict on images with a config and a checkpoint (training or deploy form); write, per image,
    the picture with the predictions drawn and the predictions as JSON into ``out_dir``.

    Args:
        config: config file (the ``*_deploy.py`` one for a checkpoint from ``tools/deploy.py``).
        checkpoint: checkpoint file.
        inputs: image files, folders (their image files) and glob patterns.
        out_dir: output folder (created).
        device: ``'cpu'`` or ``'cuda[:N]'``; default: CUDA when available.
        batch_size: images per forward pass.
        score_thr: detection only: the lowest score drawn and written.
        optimize: run the inference form (the same predictions, faster on CPUs).

    Returns:
        One :class:`ImageResult` per input image, in order; those that could not be read have
        ``error`` set (and a warning was logged), the others ``prediction``, ``drawing`` and
        ``json``.

    Raises:
        ToolError: no image found, a checkpoint that does not fit the config, and the like.
    """
    images = find_images(inputs)
    inferencer = Inferencer(config, checkpoint, device, optimize=optimize)
    return list(iter_inference(inferencer, images, out_dir, batch_size, score_thr))
