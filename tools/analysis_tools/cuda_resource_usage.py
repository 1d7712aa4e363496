"""ptxas resource usage of replk_mm's CUDA kernels per kernel and architecture, written into docs/cuda.md.

Compiles ``replk_mm/ops/csrc/cuda/dwconv_cuda.cu`` once with nvcc for every architecture and
``-Xptxas -v``, reads registers, spills, stack and static shared memory per kernel, computes the
theoretical occupancy of the launch configurations the host code uses (block size and dynamic shared
memory of ``dwconv_launch.cuh`` for a few kernel sizes, from each architecture's limits) and writes
markdown tables between the markers of the doc and every row to a CSV. With ``cuobjdump`` and
``nvdisasm`` (on PATH, in ``$CUDA_HOME/bin`` or bundled with triton) it also reads the SASS: the
instruction mix of each kernel's hot loop, and for the tensor-core kernels (``TC``) the share of HMMA
(tensor-core) instructions on sm_80 and sm_90. Needs nvcc, not a GPU.

    python tools/analysis_tools/cuda_resource_usage.py [--archs 75 80 86 89 90 100 120]
        [--doc docs/cuda.md] [--csv work_dirs/cuda_resource_usage/resource_usage.csv]
"""
import argparse
import collections
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Dict, List, Sequence

from replk_mm.deploy.atomic import write_text_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, 'replk_mm', 'ops', 'csrc')
SOURCE = os.path.join(CSRC, 'cuda', 'dwconv_cuda.cu')
BEGIN, END = '<!-- cuda-resource-usage:begin -->', '<!-- cuda-resource-usage:end -->'

# Per-SM limits: max threads, max blocks, shared memory (bytes), shared memory reserved per block,
# opt-in shared memory per block. Registers: 64K per SM, allocated per warp in units of 256.
ARCH_LIMITS = {
    70: (2048, 32, 96 * 1024, 0, 96 * 1024),
    75: (1024, 16, 64 * 1024, 0, 64 * 1024),
    80: (2048, 32, 164 * 1024, 1024, 163 * 1024),
    86: (1536, 16, 100 * 1024, 1024, 99 * 1024),
    89: (1536, 24, 100 * 1024, 1024, 99 * 1024),
    90: (2048, 32, 228 * 1024, 1024, 227 * 1024),
    100: (2048, 32, 228 * 1024, 1024, 227 * 1024),
    120: (1536, 32, 100 * 1024, 1024, 99 * 1024),
}

# Mirrors of the block shapes in dwconv_kernels.cuh / dwconv_launch.cuh.
TILE, ROWS, COLS, FWD_THREADS_PER_CHANNEL, WGRAD_THREADS = 32, 4, 4, 64, 256
MAX_SMEM_FOR_OCCUPANCY = 100 * 1024
# Architectures whose tensor-core kernels the SASS table inspects (the kernels need sm_80+).
TENSOR_CORE_ARCHS = (80, 90)


def nvcc_command(output: str, archs: Sequence[int], extra: Sequence[str] = ()) -> List[str]:
    """The nvcc command line setup.py's CUDAExtension uses for dwconv_cuda.cu (object file only)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    import torch
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        raise RuntimeError('nvcc not found on PATH; install the CUDA toolkit or add its bin/ to PATH')
    cmd = [nvcc, '-c', SOURCE, '-o', output, '-O3', '-std=c++20', '-Xptxas=-warn-spills',
           '-Xcompiler', '-fPIC', '-DREPLK_WITH_CUDA', '-DTORCH_API_INCLUDE_EXTENSION_H',
           '-DTORCH_EXTENSION_NAME=_ext',
           f'-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}']
    cmd += COMMON_NVCC_FLAGS
    for path in include_paths(device_type='cuda') + [sysconfig.get_paths()['include']]:
        cmd += ['-isystem', path]
    cmd += ['-I', os.path.join(CSRC, 'common'), '-I', os.path.join(CSRC, 'cuda')]
    for arch in archs:
        cmd += ['-gencode', f'arch=compute_{arch},code=sm_{arch}']
    return cmd + list(extra)


def supported_archs() -> List[int]:
    listed = subprocess.run(['nvcc', '--list-gpu-arch'], capture_output=True, text=True).stdout
    return [a for a in sorted(ARCH_LIMITS) if f'compute_{a}' in listed.split()]


def parse_ptxas(text: str) -> List[Dict]:
    """Rows of (arch, mangled kernel, registers, spill bytes, stack bytes, static smem) from -Xptxas -v."""
    rows, current = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
        if m:
            current = dict(kernel=m.group(1), arch=int(m.group(2)), registers=0, spill_stores=0,
                           spill_loads=0, stack=0, smem=0)
            rows.append(current)
            continue
        if current is None:
            continue
        m = re.search(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads', line)
        if m:
            current['stack'], current['spill_stores'], current['spill_loads'] = map(int, m.groups())
        m = re.search(r'Used (\d+) registers', line)
        if m:
            current['registers'] = int(m.group(1))
            s = re.search(r'(\d+) bytes smem', line)
            current['smem'] = int(s.group(1)) if s else 0
    return rows


def short_name(mangled: str) -> str:
    """'forward fp32 NCHW' from the mangled name of dwconv_forward_kernel<float, false>."""
    demangled = subprocess.run(['c++filt', mangled], capture_output=True, text=True).stdout.strip()
    m = re.search(r'dwconv_(\w+)_kernel<([^>]+)>', demangled)
    if not m:
        return demangled
    kind = {'forward': 'forward', 'weight_grad': 'weight grad', 'reduce_partials': 'reduce',
            'forward_tc': 'forward TC', 'weight_grad_tc': 'weight grad TC'}[m.group(1)]
    args = [a.strip() for a in m.group(2).split(',')]
    dtype = {'float': 'fp32', 'c10::Half': 'fp16', 'c10::BFloat16': 'bf16'}.get(args[0], args[0])
    layout = ('' if len(args) < 2 else ' NHWC' if args[1] == 'true' else ' NCHW')
    return f'{kind} {dtype}{layout}'


def forward_smem(k: int, cb: int) -> int:
    rows, pitch = TILE + k - 1, (TILE + k - 1) | 1
    floats = rows * pitch
    target = {2: 2, 4: 1, 8: 3}.get(cb, 0)
    return 4 * cb * (floats + (target - floats) % 32 + k * k)


def weight_grad_smem(k: int, cb: int) -> int:
    kp = (k + ROWS - 1) // ROWS * ROWS
    rows, pitch = TILE + kp - 1, (TILE + kp - 1) | 1
    tap_blocks = (kp // COLS) ** 2
    splits = 1 if tap_blocks >= WGRAD_THREADS // cb else WGRAD_THREADS // cb // tap_blocks
    reduction = WGRAD_THREADS * (ROWS * COLS + 1) if splits > 1 else 0
    return 4 * (cb * (rows * pitch + TILE * TILE) + reduction)


def launch_config(kind: str, k: int, channels_last: bool, arch: int):
    """(threads, dynamic smem) the host code picks for this kernel size on this architecture."""
    optin = ARCH_LIMITS[arch][4]
    tap_blocks = ((k + ROWS - 1) // ROWS) ** 2

    def smem_of(cb: int) -> float:
        if kind == 'forward':
            return forward_smem(k, cb)
        return math.inf if cb > 1 and tap_blocks * cb > WGRAD_THREADS else weight_grad_smem(k, cb)

    if smem_of(1) > optin:
        return None
    cb = next((c for c in (8, 4, 2) if channels_last and smem_of(c) <= min(optin, MAX_SMEM_FOR_OCCUPANCY)), 1)
    return (cb * FWD_THREADS_PER_CHANNEL if kind == 'forward' else WGRAD_THREADS), int(smem_of(cb))


def occupancy(arch: int, registers: int, threads: int, smem: int) -> float:
    max_threads, max_blocks, smem_sm, reserved, _ = ARCH_LIMITS[arch]
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = (65536 // regs_per_warp) // warps if regs_per_warp else max_blocks
    by_smem = smem_sm // (smem + reserved)
    blocks = min(max_blocks, max_threads // 32 // warps, by_regs, by_smem)
    return blocks * warps / (max_threads // 32)


def render(rows: List[Dict], archs: Sequence[int], kernel_sizes: Sequence[int], mix: Dict[str, str],
           tc_mix: Dict[int, Dict[str, str]]) -> str:
    names = sorted({r['name'] for r in rows}, key=lambda n: (n.split()[0] != 'forward', n))
    by = {(r['name'], r['arch']): r for r in rows}
    out = ['Registers / spill bytes (stores + loads) per thread, from `ptxas -v` (nvcc '
           f'{nvcc_version()}):', '',
           '| kernel | ' + ' | '.join(f'sm_{a}' for a in archs) + ' |',
           '|---|' + '---|' * len(archs)]
    for name in names:
        cells = [f"{by[name, a]['registers']} / {by[name, a]['spill_stores'] + by[name, a]['spill_loads']}"
                 if (name, a) in by else '-' for a in archs]
        out.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    out += ['', 'Theoretical occupancy (fp32 kernels; resident warps / max warps per SM) of the launch the '
            'host code picks; in brackets threads per block and dynamic shared memory in KiB:', '',
            '| kernel | K | ' + ' | '.join(f'sm_{a}' for a in archs) + ' |',
            '|---|---|' + '---|' * len(archs)]
    for kind, label in (('forward', 'forward'), ('weight_grad', 'weight grad')):
        for layout in ('NCHW', 'NHWC'):
            for k in kernel_sizes:
                cells = []
                for a in archs:
                    row = by.get((f'{label} fp32 {layout}', a))
                    cfg = launch_config(kind, k, layout == 'NHWC', a)
                    if row is None or cfg is None:
                        cells.append('-')
                        continue
                    occ = occupancy(a, row['registers'], *cfg)
                    cells.append(f'{occ:.0%} ({cfg[0]}, {cfg[1] / 1024:.0f})')
                out.append(f'| {label} {layout} | {k} | ' + ' | '.join(cells) + ' |')
    if mix:
        out += ['', f'Instruction mix of the hot loop (densest 200-instruction FFMA window of the sm_{max(archs)} '
                'SASS; the FFMA share bounds the fraction of the fp32 peak the issue slots allow):', '',
                '| kernel | hot loop |', '|---|---|']
        out += [f'| {name} | {mix[name]} |' for name in sorted(mix) if 'fp32' in name]
    if tc_mix:
        tc_archs = sorted(tc_mix)
        out += ['', 'Tensor-core kernels: HMMA (mma.sync m16n8k16) and shared-load (LDS) share of the innermost '
                'SASS loop that issues HMMA (one band step: 4 HMMA); an HMMA.16816 keeps its sub-partition\'s '
                'tensor core busy for 8 cycles on sm_80, about 4 to 6 on sm_90, so a loop needs an HMMA share of '
                'about 1/8 resp. 1/5 to 1/4 to saturate it from the issue slots:', '',
                '| kernel | ' + ' | '.join(f'sm_{a}' for a in tc_archs) + ' |', '|---|' + '---|' * len(tc_archs)]
        names = sorted({n for a in tc_archs for n in tc_mix[a]})
        out += [f'| {name} | ' + ' | '.join(tc_mix[a].get(name, '-') for a in tc_archs) + ' |' for name in names]
    return '\n'.join(out)


def sass_tool_path() -> str:
    """PATH with the directory holding cuobjdump and nvdisasm prepended ('' if none is found): PATH,
    $CUDA_HOME/bin, or the copies triton bundles."""
    dirs = [os.path.join(os.getenv('CUDA_HOME', '/usr/local/cuda'), 'bin')]
    try:
        import triton
        dirs.append(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin'))
    except ImportError:
        pass
    path = os.environ.get('PATH', '')
    for d in [''] + dirs:
        candidate = f'{d}{os.pathsep}{path}' if d else path
        if shutil.which('cuobjdump', path=candidate) and shutil.which('nvdisasm', path=candidate):
            return candidate
    return ''


def sass_ops(body: str) -> List:
    """(address, opcode, text) of each instruction of one function's SASS."""
    return [(int(addr, 16), re.sub(r'^@!?U?P\w+\s+', '', text.strip()).split()[0].split('.')[0], text)
            for addr, text in re.findall(r'/\*([0-9a-f]{4,})\*/\s+([^;]*);', body)]


def innermost_loop(ops: List, opcode: str) -> List[str]:
    """Opcodes of the shortest backward-branch loop that contains `opcode` (all ops if none does)."""
    best = ops
    for addr, op, text in ops:
        target = re.search(r'BRA\s+\W*0x([0-9a-f]+)', text)
        if op != 'BRA' or not target or int(target.group(1), 16) >= addr:
            continue
        loop = [o for o in ops if int(target.group(1), 16) <= o[0] <= addr]
        if any(o[1] == opcode for o in loop) and len(loop) < len(best):
            best = loop
    return [o[1] for o in best]


def sass_mix(object_file: str, arch: int, opcode: str = 'FFMA', kernels: str = '',
             path: str = '') -> Dict[str, str]:
    """Per kernel whose short name contains `kernels`: the `opcode` and LDS shares of its hot loop, read
    from the SASS: for FFMA the densest 200-instruction window (the unrolled inner loop), otherwise the
    innermost loop that issues `opcode`. `path` is a PATH holding cuobjdump and nvdisasm
    (sass_tool_path())."""
    env = dict(os.environ, PATH=path or os.environ.get('PATH', ''))
    sass = subprocess.run(['cuobjdump', '-sass', '-arch', f'sm_{arch}', object_file], capture_output=True,
                          text=True, env=env).stdout
    mix = {}
    for body in sass.split('Function : ')[1:]:
        name = short_name(body.split()[0])
        if kernels not in name:
            continue
        ops = sass_ops(body)
        if opcode == 'FFMA':
            names = [o[1] for o in ops]
            window = max((names[i:i + 200] for i in range(max(1, len(names) - 199))),
                         key=lambda w: w.count(opcode))
        else:
            window = innermost_loop(ops, opcode)
        count = collections.Counter(window)
        mix[name] = f"{count[opcode] / len(window):.0%} {opcode}, {count['LDS'] / len(window):.0%} LDS"
        if opcode != 'FFMA':
            mix[name] += f' of a {len(window)}-instruction loop'
    return mix


def nvcc_version() -> str:
    text = subprocess.run(['nvcc', '--version'], capture_output=True, text=True).stdout
    m = re.search(r'release ([\d.]+)', text)
    return m.group(1) if m else 'unknown'



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', type=int, nargs='+', help='SM versions (default: all nvcc supports '
                        f'among {sorted(ARCH_LIMITS)})')
    parser.add_argument('--kernel-sizes', type=int, nargs='+', default=[13, 31, 63])
    parser.add_argument('--doc', default=os.path.join(ROOT, 'docs', 'cuda.md'))
    parser.add_argument('--csv', default=os.path.join(ROOT, 'work_dirs', 'cuda_resource_usage',
                                                      'resource_usage.csv'))
    args = parser.parse_args(argv)
    archs = args.archs or supported_archs()
    unknown = sorted(set(archs) - set(ARCH_LIMITS))
    if unknown:
        parser.error(f'no SM limits known for {unknown}; choose among {sorted(ARCH_LIMITS)}')
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, 'dwconv_cuda.o')
        proc = subprocess.run(nvcc_command(obj, archs, ['-Xptxas=-v']), capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            return proc.returncode
        path = sass_tool_path()
        mix = sass_mix(obj, max(archs), path=path) if path else {}
        tc_mix = {a: sass_mix(obj, a, 'HMMA', 'TC', path) for a in TENSOR_CORE_ARCHS if a in archs} if path else {}
    rows = parse_ptxas(proc.stdout + proc.stderr)
    for row in rows:
        row['name'] = short_name(row['kernel'])
    fields = ['arch', 'name', 'registers', 'spill_stores', 'spill_loads', 'stack', 'smem', 'kernel']
    lines = [','.join(fields)] + [','.join(str(r[f]) for f in fields) for r in rows]
    write_text_atomic(args.csv, '\n'.join(lines) + '\n')
    with open(args.doc) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        parser.error(f'{args.doc} lacks the markers {BEGIN} ... {END}')
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    table = render(rows, archs, args.kernel_sizes, mix, tc_mix)
    write_text_atomic(args.doc, f'{head}{BEGIN}\n{table}\n{END}{tail}')
    print(f'{len(rows)} kernels x archs -> {args.doc}, {args.csv}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
