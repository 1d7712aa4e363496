# The authors' released checkpoints, with the papers' / READMEs' figures as `paper` rows.
# Download each `download` file (RepLKNet: the Google Drive / Baidu links of
# github.com/DingXiaoH/RepLKNet-pytorch; UniRepLKNet: huggingface.co/DingXiaoH/UniRepLKNet) into
# checkpoints/, run its `convert` command, then on a GPU machine with the datasets in data/:
#   python tools/analysis_tools/benchmark_downstream.py configs/benchmarks/official.py
# Metric scales are the evaluators': mIoU and top-1 in %, COCO AP as a fraction.
# Files named by the README text or the authors' code: RepLKNet-31B_ImageNet-1K_224.pth,
# RepLKNet-31L_ImageNet-22K-to-1K_384.pth, RepLKNet-XL_MegData73M_ImageNet1K.pth,
# RepLKNet-31B_ImageNet-1K_UperNet_Cityscapes.pth, RepLKNet-31B_ImageNet-22K_CascMaskRCNN_COCO.pth
# and all unireplknet_*.pth; the other RepLKNet downstream files are links in a README table
# (row named in `note`): save them under the name given here.
_replk_cls = 'python tools/convert_checkpoint.py checkpoints/{src} checkpoints/{dst} --to classifier'
_downstream = ('as released (the authors\' key names); deploy form: '
               'python tools/deploy.py {cfg} checkpoints/{src} checkpoints/deploy/')


def _cls(name, config, src, top1, params, flops, size, form='training', note=None):
    dst = name + '_classifier.pth'
    return dict(name=name, config=config, checkpoint='checkpoints/' + dst, download=src,
                convert=_replk_cls.format(src=src, dst=dst), note=note,
                paper=dict(metrics={'accuracy/top1': top1}, params=params, flops=flops,
                           input=f'{size}x{size}', form=form))


def _down(name, config, src, metrics, params, flops, size, note):
    return dict(name=name, config=config, checkpoint='checkpoints/' + src, download=src,
                convert=_downstream.format(cfg=config, src=src), note=note,
                paper=dict(metrics=metrics, params=params, flops=flops, input=size))


benchmarks = [
    # RepLKNet, ImageNet-1K (mmpretrain ImageClassifier; paper Table 8/9, README).
    _cls('replknet-31B_in1k-224', 'configs/replknet/replknet-31B_32xb64_in1k.py',
         'RepLKNet-31B_ImageNet-1K_224.pth', 83.5, 79.86e6, 15.3e9, 224),
    _cls('replknet-31L_in22k-in1k-384', 'configs/replknet/replknet-31L_32xb16_in1k-384px.py',
         'RepLKNet-31L_ImageNet-22K-to-1K_384.pth', 86.6, 172.7e6, 96.0e9, 384),
    _cls('replknet-XL_megdata73m-in1k-320', 'configs/replknet/replknet-XL_32xb16_in1k-320px.py',
         'RepLKNet-XL_MegData73M_ImageNet1K.pth', 87.8, 335.4e6, 128.7e9, 320),
    # RepLKNet + UperNet (README "ADE20K / Cityscapes" table; FLOPs at 2048x512 for 1K models,
    # 2560x640 for 22K / MegData73M ones, following Swin). mIoU single-scale.
    _down('upernet_replknet31b_cityscapes-769', 'configs/upernet/upernet_replknet31b_cityscapes-769.py',
          'RepLKNet-31B_ImageNet-1K_UperNet_Cityscapes.pth', {'mIoU': 83.1}, 110e6, 2315e9,
          '2048x512', 'README row: RepLKNet-31B | ImageNet-1K | Cityscapes | 80k'),
    _down('upernet_replknet31b_ade20k', 'configs/upernet_replknet31b_ade20k.py',
          'RepLKNet-31B_ImageNet-1K_UperNet_ADE20K.pth', {'mIoU': 49.9}, 112e6, 1170e9,
          '2048x512', 'README row: RepLKNet-31B | ImageNet-1K | ADE20K | 160k'),
    _down('upernet_replknet31b-22k_ade20k-640', 'configs/upernet/upernet_replknet31b-22k_ade20k-640.py',
          'RepLKNet-31B_ImageNet-22K_UperNet_ADE20K.pth', {'mIoU': 51.5}, 112e6, 1829e9,
          '2560x640', 'README row: RepLKNet-31B | ImageNet-22K | ADE20K | 160k'),
    _down('upernet_replknet31l-22k_ade20k-640', 'configs/upernet/upernet_replknet31l-22k_ade20k-640.py',
          'RepLKNet-31L_ImageNet-22K_UperNet_ADE20K.pth', {'mIoU': 52.4}, 207e6, 2404e9,
          '2560x640', 'README row: RepLKNet-31L | ImageNet-22K | ADE20K | 160k'),
    _down('upernet_replknetxl_ade20k-640', 'configs/upernet/upernet_replknetxl_ade20k-640.py',
          'RepLKNet-XL_MegData73M_UperNet_ADE20K.pth', {'mIoU': 55.2}, 374e6, 3431e9,
          '2560x640', 'README row: RepLKNet-XL | MegData73M | ADE20K | 160k'),
    # RepLKNet + FCOS / Cascade Mask R-CNN on COCO (README "COCO" table; FLOPs at 1280x800).
    _down('fcos_replknet31b_fpn_2x_coco', 'configs/fcos/fcos_replknet31b_fpn_2x_coco.py',
          'RepLKNet-31B_ImageNet-1K_FCOS_COCO.pth', {'coco/bbox_mAP': 0.470}, 87e6, 437e9,
          '1280x800', 'README row: RepLKNet-31B | ImageNet-1K | FCOS | 2x'),
    _down('cascade-mask-rcnn_replknet31b_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_replknet31b_fpn_3x_coco.py',
          'RepLKNet-31B_ImageNet-1K_CascMaskRCNN_COCO.pth',
          {'coco/bbox_mAP': 0.522, 'coco/segm_mAP': 0.452}, 137e6, 965e9, '1280x800',
          'README row: RepLKNet-31B | ImageNet-1K | Cascade Mask RCNN | 3x'),
    _down('cascade-mask-rcnn_replknet31b-22k_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_replknet31b-22k_fpn_3x_coco.py',
          'RepLKNet-31B_ImageNet-22K_CascMaskRCNN_COCO.pth',
          {'coco/bbox_mAP': 0.530, 'coco/segm_mAP': 0.460}, 137e6, 965e9, '1280x800',
          'README row: RepLKNet-31B | ImageNet-22K | Cascade Mask RCNN | 3x'),
    _down('cascade-mask-rcnn_replknet31l-22k_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_replknet31l-22k_fpn_3x_coco.py',
          'RepLKNet-31L_ImageNet-22K_CascMaskRCNN_COCO.pth',
          {'coco/bbox_mAP': 0.539, 'coco/segm_mAP': 0.465}, 229e6, 1321e9, '1280x800',
          'README row: RepLKNet-31L | ImageNet-22K | Cascade Mask RCNN | 3x'),
    _down('cascade-mask-rcnn_replknetxl_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_replknetxl_fpn_3x_coco.py',
          'RepLKNet-XL_MegData73M_CascMaskRCNN_COCO.pth',
          {'coco/bbox_mAP': 0.555, 'coco/segm_mAP': 0.480}, 392e6, 1958e9, '1280x800',
          'README row: RepLKNet-XL | MegData73M | Cascade Mask RCNN | 3x'),
    # UniRepLKNet-T downstream (file names of the authors' detection / segmentation READMEs; the
    # S files are links only and their names are not given).
    _down('upernet_unireplknet-t_ade20k', 'configs/upernet/upernet_unireplknet-t_ade20k.py',
          'upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth', {'mIoU': 48.6}, 61e6, 946e9,
          '2048x512', 'UniRepLKNet README row: UniRepLKNet-T | 512x512 (ss)'),
    _down('cascade-mask-rcnn_unireplknet-t_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_unireplknet-t_fpn_3x_coco.py',
          'casc_mask_rcnn_unireplknet_t_in1k_3x_coco_ap51.75.pth',
          {'coco/bbox_mAP': 0.517, 'coco/segm_mAP': 0.449}, 89e6, 749e9, '1280x800',
          'UniRepLKNet README row: UniRepLKNet-T | 1280x800'),
    # UniRepLKNet-B / L / XL downstream from the 22K -> 1K classifiers (README tables; only the B
    # UperNet and XL detector files are named in the authors' repository: save the others, links
    # in the README row named in `note`, under the name given here).
    _down('upernet_unireplknet-b-22k_ade20k-640', 'configs/upernet/upernet_unireplknet-b-22k_ade20k-640.py',
          'upernet_unireplknet_b_in22k_640_160k_ade20k_miou53.52.pth', {'mIoU': 53.5}, 130e6, 1850e9,
          '2560x640', 'UniRepLKNet README row: UniRepLKNet-B_22K | 640x640'),
    _down('upernet_unireplknet-l-22k_ade20k-640', 'configs/upernet/upernet_unireplknet-l-22k_ade20k-640.py',
          'upernet_unireplknet_l_in22k_640_160k_ade20k.pth', {'mIoU': 54.5}, 254e6, 2507e9,
          '2560x640', 'UniRepLKNet README row: UniRepLKNet-L_22K | 640x640'),
    _down('upernet_unireplknet-xl-22k_ade20k-640',
          'configs/upernet/upernet_unireplknet-xl-22k_ade20k-640.py',
          'upernet_unireplknet_xl_in22k_640_160k_ade20k.pth', {'mIoU': 55.2}, 425e6, 3420e9,
          '2560x640', 'UniRepLKNet README row: UniRepLKNet-XL_22K | 640x640'),
    _down('cascade-mask-rcnn_unireplknet-b-22k_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_unireplknet-b-22k_fpn_3x_coco.py',
          'casc_mask_rcnn_unireplknet_b_in22k_3x_coco.pth',
          {'coco/bbox_mAP': 0.548, 'coco/segm_mAP': 0.474}, 155e6, 978e9, '1280x800',
          'UniRepLKNet README row: UniRepLKNet-B_22K | 1280x800'),
    _down('cascade-mask-rcnn_unireplknet-l-22k_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_unireplknet-l-22k_fpn_3x_coco.py',
          'casc_mask_rcnn_unireplknet_l_in22k_3x_coco.pth',
          {'coco/bbox_mAP': 0.558, 'coco/segm_mAP': 0.484}, 276e6, 1385e9, '1280x800',
          'UniRepLKNet README row: UniRepLKNet-L_22K | 1280x800'),
    _down('cascade-mask-rcnn_unireplknet-xl-22k_fpn_3x_coco',
          'configs/cascade_mask_rcnn/cascade-mask-rcnn_unireplknet-xl-22k_fpn_3x_coco.py',
          'casc_mask_rcnn_unireplknet_xl_in22k_3x_coco_ap56.39.pth',
          {'coco/bbox_mAP': 0.564, 'coco/segm_mAP': 0.490}, 443e6, 1952e9, '1280x800',
          'UniRepLKNet README row: UniRepLKNet-XL_22K | 1280x800'),
    # UniRepLKNet, ImageNet-1K (file names of the authors' unireplknet.py; their README's params
    # are the deploy form).
    _cls('unireplknet-a_in1k-224', 'configs/unireplknet/unireplknet-a_32xb128_in1k.py',
         'unireplknet_a_in1k_224_acc77.03.pth', 77.0, 4.44e6, 0.6e9, 224, 'deploy'),
    _cls('unireplknet-f_in1k-224', 'configs/unireplknet/unireplknet-f_32xb128_in1k.py',
         'unireplknet_f_in1k_224_acc78.58.pth', 78.6, 6.24e6, 0.9e9, 224, 'deploy'),
    _cls('unireplknet-p_in1k-224', 'configs/unireplknet/unireplknet-p_32xb128_in1k.py',
         'unireplknet_p_in1k_224_acc80.23.pth', 80.2, 10.74e6, 1.6e9, 224, 'deploy'),
    _cls('unireplknet-n_in1k-224', 'configs/unireplknet/unireplknet-n_32xb128_in1k.py',
         'unireplknet_n_in1k_224_acc81.64.pth', 81.6, 18.32e6, 2.8e9, 224, 'deploy'),
    _cls('unireplknet-t_in1k-224', 'configs/unireplknet/unireplknet-t_32xb128_in1k.py',
         'unireplknet_t_in1k_224_acc83.21.pth', 83.2, 31.04e6, 4.9e9, 224, 'deploy'),
    _cls('unireplknet-s_in1k-224', 'configs/unireplknet/unireplknet-s_64xb64_in1k.py',
         'unireplknet_s_in1k_224_acc83.91.pth', 83.9, 55.65e6, 9.1e9, 224, 'deploy'),
    _cls('unireplknet-s_in22k-in1k-384',
         'configs/unireplknet/unireplknet-s_in22k-pre_8xb64_in1k-384px.py',
         'unireplknet_s_in22k_to_in1k_384_acc86.44.pth', 86.4, 55.65e6, 26.7e9, 384, 'deploy'),
    _cls('unireplknet-b_in22k-in1k-384',
         'configs/unireplknet/unireplknet-b_in22k-pre_8xb64_in1k-384px.py',
         'unireplknet_b_in22k_to_in1k_384_acc87.40.pth', 87.4, 98.01e6, 47.2e9, 384, 'deploy'),
    _cls('unireplknet-l_in22k-in1k-384',
         'configs/unireplknet/unireplknet-l_in22k-pre_8xb64_in1k-384px.py',
         'unireplknet_l_in22k_to_in1k_384_acc87.88.pth', 87.9, 218.45e6, 105.4e9, 384, 'deploy'),
    _cls('unireplknet-xl_in22k-in1k-384',
         'configs/unireplknet/unireplknet-xl_in22k-pre_16xb32_in1k-384px.py',
         'unireplknet_xl_in22k_to_in1k_384_acc87.96.pth', 88.0, 386.53e6, 187e9, 384, 'deploy'),
]
