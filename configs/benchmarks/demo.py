# The checkpoints `make demo` trains on the synthetic demo data (tools/misc/run_demo.sh):
#   python tools/analysis_tools/benchmark_downstream.py configs/benchmarks/demo.py
# No `paper` figures: these tiny models exist to exercise the pipeline, not to match a paper.
benchmarks = [
    dict(
        name='upernet_replknet-demo',
        config='configs/demo/upernet_replknet-demo_ade20k-demo.py',
        checkpoint='work_dirs/demo_seg/iter_300.pth'),
    dict(
        name='fcos_replknet-demo',
        config='configs/demo/fcos_replknet-demo_coco-demo.py',
        checkpoint='work_dirs/demo_fcos/epoch_6.pth'),
    dict(
        name='cascade-mask-rcnn_replknet-demo',
        config='configs/demo/cascade-mask-rcnn_replknet-demo_coco-demo.py',
        checkpoint='work_dirs/demo_cascade/epoch_4.pth'),
]
