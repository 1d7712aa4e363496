"""The package's depth-wise conv extension (replk_mm._ext) on the CPU: values and gradients against
F.conv2d, every instruction-set variant, memory formats, errors, torch.compile, a backbone."""
import pytest
import torch
import torch.nn.functional as F

from replk_mm.ops import dwconv_ext


def test_extension_is_built():
    # make setup always builds replk_mm._ext: a missing build is a failure, not a skip.
    assert dwconv_ext.is_available(torch.zeros(1, 1, 1, 1))

ISA_ENV = 'REPLK_DWCONV_CPU_ISA'
DIRECT_ENV = 'REPLK_DWCONV_CPU_DIRECT_MAX_K'


def _cpu_isas():
    flags = open('/proc/cpuinfo').read() if __import__('os').path.exists('/proc/cpuinfo') else ''
    isas = ['generic']
    if ' avx2 ' in flags and ' fma ' in flags:
        isas.append('avx2')
    if all(f' {f} ' in flags for f in ('avx512f', 'avx512vl', 'avx512dq', 'avx512bw')):
        isas.append('avx512')
    return isas


def _inputs(shape, k, channels_last=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, k, k, generator=g, dtype=dtype)
    bias = torch.randn(c, generator=g, dtype=dtype)
    grad_out = torch.randn(shape, generator=g, dtype=dtype)
    return x, weight, bias, grad_out


def _run(fn, x, weight, bias, grad_out):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(x, weight, bias)
    y.backward(grad_out)
    return y, x.grad, weight.grad, bias.grad


def _reference(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])


def _assert_matches(ours, ref, k):
    names = ('output', 'grad_input', 'grad_weight', 'grad_bias')
    for name, a, r in zip(names, ours, ref):
        # fp32 sums of up to N*H*W terms: tolerance relative to the magnitude of the result
        tol = 2e-6 * (k + 4) * r.abs().max().item() + 1e-6
        assert a.shape == r.shape, name
        torch.testing.assert_close(a, r, rtol=1e-4, atol=tol, msg=f'{name} differs (K={k})')


def _assert_matches_conv2d(x, weight, bias, grad_out, k):
    """Output and the three gradients of the extension equal F.conv2d's."""
    _assert_matches(_run(dwconv_ext.dwconv2d, x, weight, bias, grad_out),
                    _run(_reference, x, weight, bias, grad_out), k)


def _use_isa(isa, monkeypatch):
    """Run the kernels of one instruction set (skipped where the CPU lacks it)."""
    if isa not in _cpu_isas():
        pytest.skip(f'this CPU has no {isa}')
    monkeypatch.setenv(ISA_ENV, isa)


# H != W, H or W smaller than K, C not a multiple of the vector widths (16 / 8 / 4), batch 1
SHAPES = [(2, 19, 9, 14), (1, 33, 12, 35)]


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('k', [3, 5, 7, 13, 27, 31])
def test_matches_conv2d(k, channels_last):
    for shape in SHAPES:
        x, weight, bias, grad_out = _inputs(shape, k, channels_last)
        ours = _run(dwconv_ext.dwconv2d, x, weight, bias, grad_out)
        _assert_matches(ours, _run(_reference, x, weight, bias, grad_out), k)
        assert ours[0].is_contiguous(memory_format=torch.channels_last
                                     if channels_last else torch.contiguous_format)


@pytest.mark.parametrize('isa', ['generic', 'avx2', 'avx512'])
def test_every_instruction_set(isa, monkeypatch):
    _use_isa(isa, monkeypatch)
    for k, shape, channels_last in ((13, (2, 37, 11, 21), False), (31, (1, 24, 33, 17), True),
                                    (3, (1, 9, 1, 40), False)):
        x, weight, bias, grad_out = _inputs(shape, k, channels_last, seed=k)
        _assert_matches_conv2d(x, weight, bias, grad_out, k)


# Each instruction set chooses its own tap-chunk widths (AVX2's forward: at most 6, the width that
# pads a kernel row least; the others: at most 8, the fewest chunks) and register blocks: every odd
# K up to 31 hits another chunk width / padding combination.
@pytest.mark.parametrize('isa', ['generic', 'avx2', 'avx512'])
def test_every_chunk_width(isa, monkeypatch):
    _use_isa(isa, monkeypatch)
    monkeypatch.setenv(DIRECT_ENV, '0')  # the packed path, whatever K
    for k in range(1, 32, 2):
        x, weight, bias, grad_out = _inputs((1, 24, 10, 37), k, channels_last=k % 4 == 1, seed=k)
        _assert_matches_conv2d(x, weight, bias, grad_out, k)


def test_unknown_instruction_set_is_rejected(monkeypatch):
    monkeypatch.setenv(ISA_ENV, 'sse9')
    x, weight, _, _ = _inputs((1, 4, 5, 5), 3)
    with pytest.raises(RuntimeError, match='REPLK_DWCONV_CPU_ISA must be'):
        dwconv_ext.dwconv2d(x, weight)


# The CPU forward (and grad input) has three schemes: packed tiles of VL channels, and for small
# kernels direct channels_last rows (C a multiple of VL) and direct NCHW planes. DIRECT_ENV=15
# sends every K <= 15 to the direct ones, 0 turns them off: both must agree with F.conv2d on every
# instruction set, for shapes whose borders, partial vectors and small images hit every branch.
@pytest.mark.parametrize('direct_max_k', ['0', '15'], ids=['packed', 'direct'])
@pytest.mark.parametrize('isa', ['generic', 'avx2', 'avx512'])
def test_every_forward_scheme(isa, direct_max_k, monkeypatch):
    _use_isa(isa, monkeypatch)
    monkeypatch.setenv(DIRECT_ENV, direct_max_k)
    for k in (1, 3, 5, 7, 15):
        for shape, channels_last in (((2, 32, 9, 14), True), ((1, 48, 12, 35), False),
                                     ((1, 48, 12, 35), True), ((1, 16, 3, 5), True),
                                     ((2, 16, 17, 8), False), ((1, 32, 6, 33), False)):
            x, weight, bias, grad_out = _inputs(shape, k, channels_last, seed=k)
            _assert_matches_conv2d(x, weight, bias, grad_out, k)
        # views whose rows (NCHW) or channels (channels_last) are still contiguous
        base = torch.randn(1, 32, 14, 20)
        for x in (base[:, :, 1:-2, 3:-1], base.to(memory_format=torch.channels_last)[:, :, 2:, :-3]):
            weight, bias = torch.randn(32, 1, k, k), torch.randn(32)
            grad_out = torch.randn(x.shape)
            _assert_matches_conv2d(x, weight, bias, grad_out, k)


# Narrow channels_last images whose kernel spans them (K >= 2W - 1: RepLKNet's 14 x 14 stage with
# K = 27, 7 x 7 with K = 13) keep a row of outputs and inputs in registers, one compile-time width
# per W up to the instruction set's limit (AVX-512 15, AVX2 and generic 7): every width, images
# taller and shorter than the kernel, partial channel vectors (the packed path takes those), the
# limit and one past it, and the input gradient (channels_last too) agree with F.conv2d.
@pytest.mark.parametrize('isa', ['generic', 'avx2', 'avx512'])
def test_narrow_images(isa, monkeypatch):
    _use_isa(isa, monkeypatch)
    for w in range(1, 18):
        k = 2 * w - 1 + 2 * (w % 3)  # K = 2W - 1 and wider
        for h, c in ((w, 32), (k + 3, 16), (1, 48), (5, 20)):
            x, weight, bias, grad_out = _inputs((2, c, h, w), k, channels_last=True, seed=w)
            grad_out = grad_out.to(memory_format=torch.channels_last)
            _assert_matches_conv2d(x, weight, bias, grad_out, k)


def test_bad_direct_path_setting_is_rejected(monkeypatch):
    monkeypatch.setenv(DIRECT_ENV, '99')
    x, weight, _, _ = _inputs((1, 16, 5, 5), 3)
    with pytest.raises(RuntimeError, match='REPLK_DWCONV_CPU_DIRECT_MAX_K must be an integer'):
        dwconv_ext.dwconv2d(x, weight)


# Outputs larger than 1 MiB per thread are written by the AVX-512 direct channels_last rows with
# non-temporal stores (and a fence per row; narrower vectors, half a cache line or less, store
# normally): values and gradients must not change, with two threads sharing the image rows,
# partial register blocks (W = 61) and both the forward and the input gradient.
def test_streamed_channels_last_output(monkeypatch):
    _use_isa('avx512', monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for k in (3, 5):
            shape = (2, 64, 70, 61)  # 2.1 MiB of float32 > 2 threads x 1 MiB
            x, weight, bias, grad_out = _inputs(shape, k, channels_last=True, seed=k)
            grad_out = grad_out.to(memory_format=torch.channels_last)
            assert x.numel() * 4 > 2 * 2 ** 20
            _assert_matches_conv2d(x, weight, bias, grad_out, k)
    finally:
        torch.set_num_threads(threads)


def test_non_contiguous_inputs():
    k = 7
    base = torch.randn(2, 40, 13, 30)
    grad_out = torch.randn(2, 20, 13, 15)
    weight, bias = torch.randn(20, 1, k, k), torch.randn(20)
    for x in (base[:, ::2, :, ::2], base.permute(0, 1, 3, 2)[:, :20, :15, :13].transpose(2, 3)):
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
        _assert_matches_conv2d(x, weight, bias, grad_out, k)


@pytest.mark.parametrize('isa', ['generic', 'avx2', 'avx512'])
def test_bfloat16_is_computed_in_float32(isa, monkeypatch):
    # bfloat16 tensors are widened while packing, computed in float32 and rounded once on output:
    # the result is float32 arithmetic on the same (rounded) values, to bfloat16's precision.
    _use_isa(isa, monkeypatch)
    names = ('output', 'grad_input', 'grad_weight', 'grad_bias')
    for k, shape, channels_last in ((3, (2, 32, 9, 14), True), (13, (1, 19, 12, 35), False),
                                    (5, (2, 32, 7, 37), False), (31, (1, 16, 20, 18), True)):
        x, weight, bias, grad_out = (t.bfloat16() for t in _inputs(shape, k, channels_last))
        ours = _run(dwconv_ext.dwconv2d, x, weight, bias, grad_out)
        ref = _run(_reference, *(t.float() for t in (x, weight, bias, grad_out)))
        for name, a, r in zip(names, ours, ref):
            assert a.dtype == torch.bfloat16, name
            torch.testing.assert_close(a.float(), r, rtol=2 ** -7, atol=2 ** -7 * r.abs().max().item(),
                                       msg=f'{name} differs (K={k})')
        assert ours[0].is_contiguous(memory_format=torch.channels_last
                                     if channels_last else torch.contiguous_format)


def test_gradcheck_float64():
    for shape, k in (((2, 3, 5, 4), 5), ((1, 5, 3, 6), 7)):
        x, weight, bias, _ = _inputs(shape, k, dtype=torch.float64)
        args = tuple(t.requires_grad_() for t in (x, weight, bias))
        assert torch.autograd.gradcheck(dwconv_ext.dwconv2d, args, fast_mode=True)
    x, weight, _, _ = _inputs((1, 2, 4, 3), 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(dwconv_ext.dwconv2d, (x.requires_grad_(), weight.requires_grad_()))


def test_without_bias_and_partial_grads():
    x, weight, _, grad_out = _inputs((2, 18, 10, 10), 13)
    w = weight.clone().requires_grad_()
    dwconv_ext.dwconv2d(x, w).backward(grad_out)  # x needs no gradient
    w_ref = weight.clone().requires_grad_()
    _reference(x, w_ref, None).backward(grad_out)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-3)
    grad_weight, grad_bias = torch.ops.replk_mm.dwconv2d_backward_weight(grad_out, x, 13, False)
    assert grad_bias is None and grad_weight.shape == (18, 1, 13, 13)


def test_weight_gradient_is_deterministic():
    x, weight, bias, grad_out = _inputs((4, 40, 16, 16), 31)
    first = _run(dwconv_ext.dwconv2d, x, weight, bias, grad_out)
    second = _run(dwconv_ext.dwconv2d, x, weight, bias, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_batch():
    x = torch.zeros(0, 8, 5, 5)
    assert dwconv_ext.dwconv2d(x, torch.ones(8, 1, 3, 3)).shape == (0, 8, 5, 5)


@pytest.mark.parametrize('args, error, match', [
    (((2, 4, 5, 5), (4, 1, 4, 4)), ValueError, 'odd square kernels'),
    (((2, 4, 5, 5), (4, 1, 3, 5)), ValueError, 'odd square kernels'),
    (((2, 4, 5, 5), (3, 1, 3, 3)), ValueError, r'\(C, 1, K, K\) with C=4'),
    (((4, 5, 5), (4, 1, 3, 3)), ValueError, r'\(N, C, H, W\)'),
])
def test_bad_shapes(args, error, match):
    x_shape, w_shape = args
    with pytest.raises(error, match=match):
        dwconv_ext.dwconv2d(torch.randn(x_shape), torch.randn(w_shape))


def test_bad_inputs_name_the_fix():
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match=r'bias of shape \(4,\)'):
        dwconv_ext.dwconv2d(x, weight, torch.randn(5))
    with pytest.raises(TypeError, match=r'cast'):
        dwconv_ext.dwconv2d(x.half(), weight.half())
    with pytest.raises(TypeError, match='weight has dtype torch.float64'):
        dwconv_ext.dwconv2d(x, weight.double())
    with pytest.raises(RuntimeError, match='cannot run on meta'):
        dwconv_ext.dwconv2d(x.to('meta'), weight.to('meta'))
    with pytest.raises(ValueError, match='weight is on meta'):
        dwconv_ext.dwconv2d(x, weight.to('meta'))
    # the C++ checks guard the raw ops too
    with pytest.raises(RuntimeError, match='odd size'):
        torch.ops.replk_mm.dwconv2d_forward(x, torch.randn(4, 1, 2, 2), None)
    with pytest.raises(RuntimeError, match='float32, float64 and bfloat16'):
        torch.ops.replk_mm.dwconv2d_backward_input(x.half(), weight.half())
    with pytest.raises(RuntimeError, match='same shape'):
        torch.ops.replk_mm.dwconv2d_backward_weight(x, x[:, :2], 3, True)
    with pytest.raises(RuntimeError, match='kernel_size must be odd'):
        torch.ops.replk_mm.dwconv2d_backward_weight(x, x, 4, True)


def test_torch_compile_uses_the_fake_kernels():
    x, weight, bias, _ = _inputs((1, 6, 7, 9), 5)

    def f(x, w, b):
        return dwconv_ext.dwconv2d(x, w, b).relu().sum()

    compiled = torch.compile(f, backend='aot_eager', fullgraph=True)
    args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = compiled(*args)
    out.backward()
    ref_args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    (_reference(*ref_args).relu().sum()).backward()
    torch.testing.assert_close(out, _reference(x, weight, bias).relu().sum())
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-4)


def test_backbone_unchanged_with_the_extension():
    from replk_mm.models.backbones.replknet import RepLKNet
    from replk_mm.ops.depthwise_conv import use_dw_impl
    arch = dict(large_kernel_sizes=(13, 11), layers=(1, 1), channels=(16, 24), small_kernel=5,
                dw_ratio=1, ffn_ratio=2)
    torch.manual_seed(0)
    model = RepLKNet(arch=arch, out_indices=(0, 1), drop_path_rate=0.)
    x = torch.randn(2, 3, 64, 48)
    results = {}
    for impl in ('torch', 'ext'):
        model.zero_grad()
        with use_dw_impl(impl):
            outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = ([o.detach() for o in outs], grads)
    for a, r in zip(results['ext'][0], results['torch'][0]):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    assert results['ext'][1].keys() == results['torch'][1].keys()
    assert any('large_kernel' in n for n in results['ext'][1])
    for name, g in results['torch'][1].items():
        torch.testing.assert_close(results['ext'][1][name], g, rtol=1e-3, atol=1e-4, msg=name)


def _benchmark_module():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'analysis_tools',
                        'benchmark_dwconv.py')
    spec = importlib.util.spec_from_file_location('benchmark_dwconv', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_script_writes_its_tables(tmp_path):
    bench = _benchmark_module()
    # useful taps: K=3 on a length-2 axis -> outputs 0 and 1 each see 2 of 3 taps
    assert bench.useful_taps_1d(2, 3) == 4 and bench.useful_taps_1d(40, 1) == 40
    bench.main(['--device', 'cpu', '--kernels', '3', '--resolutions', '4', '--batch', '1',
                '--passes-batch', '1', '--repeats', '1', '--gemm-size', '128', '--out', str(tmp_path)])
    for name in ('dwconv_passes.csv', 'dwconv_passes.md', 'dwconv_table1.csv', 'dwconv_table1.md',
                 'dwconv_table1.png'):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / 'dwconv_table1.md').read_text()
    assert '| 4 | ours_nchw |' in table and '| 4 | pytorch_channels_last |' in table
    assert 'forward never slower' in (tmp_path / 'dwconv_passes.md').read_text()
    assert 'page_faults' in (tmp_path / 'dwconv_passes.csv').read_text().splitlines()[0]
    assert 'freed memory kept mapped' in (tmp_path / 'dwconv_passes.md').read_text()


def test_benchmark_keeps_freed_memory_mapped():
    # With glibc asked to keep freed memory, a 12 MiB block allocated again after being freed
    # reuses mapped pages: no page fault per page (glibc's default maps and unmaps it, 3072 faults,
    # until its dynamic threshold adapts).
    import ctypes
    import ctypes.util
    import resource
    bench = _benchmark_module()
    assert bench.keep_freed_memory_mapped()
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def faults_writing(size=12 << 20):
        block = libc.malloc(size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(block, 1, size)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        libc.free(block)
        return faults

    faults_writing()
    assert faults_writing() < 100
