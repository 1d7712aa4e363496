"""Build script of replk_mm: the Python package and its depth-wise conv extension ``replk_mm._ext``.

The extension follows mmcv's layout (``replk_mm/ops/csrc/{common,bindings,cpu,cuda}``). The CUDA
sources are compiled when CUDA is available to torch or ``FORCE_CUDA=1``; without nvcc the
C++/CPU part alone is built.
"""
import glob
import os
import re

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('replk_mm', 'ops', 'csrc')


def read_version() -> str:
    with open(os.path.join(ROOT, 'replk_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


# Architectures built by default (TORCH_CUDA_ARCH_LIST overrides): Volta to Blackwell, as far as the
# installed nvcc supports them (nvcc 13 starts at Turing), plus PTX of the newest for later GPUs.
DEFAULT_CUDA_ARCHS = ('7.0', '7.5', '8.0', '8.6', '8.9', '9.0', '10.0', '12.0')


def default_cuda_arch_list(cuda_home: str) -> str:
    import subprocess
    nvcc = os.path.join(cuda_home, 'bin', 'nvcc')
    listed = subprocess.run([nvcc, '--list-gpu-arch'], capture_output=True, text=True).stdout.split()
    archs = [a for a in DEFAULT_CUDA_ARCHS if f"compute_{a.replace('.', '')}" in listed]
    if not archs:
        raise RuntimeError(f'{nvcc} --list-gpu-arch lists none of {DEFAULT_CUDA_ARCHS}; '
                           'set TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0") to choose the architectures')
    return ';'.join(archs[:-1] + [archs[-1] + '+PTX'])


def set_cuda_home() -> None:
    """CUDA_HOME from nvcc itself when unset (torch guesses it from nvcc's path, wrong for wrappers)."""
    import shutil
    import subprocess
    if os.getenv('CUDA_HOME') or os.getenv('CUDA_PATH') or not shutil.which('nvcc'):
        return
    dry = subprocess.run(['nvcc', '-dryrun', '-E', '-x', 'cu', os.devnull], capture_output=True, text=True)
    top = re.search(r'TOP=(\S+)', dry.stderr + dry.stdout)
    if top:
        os.environ['CUDA_HOME'] = os.path.realpath(top.group(1))


def get_extensions() -> list:
    sources = sorted(glob.glob(os.path.join(CSRC, 'bindings', '*.cpp')) +
                     glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    if not sources:
        return []
    set_cuda_home()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension, CUDA_HOME
    import torch
    with_cuda = os.getenv('FORCE_CUDA', '0') == '1' or (
        torch.cuda.is_available() and CUDA_HOME is not None)
    cxx_flags = ['-O3', '-std=c++20', '-fopenmp', '-fno-trapping-math', '-fno-math-errno']
    define_macros = []
    extension = CppExtension
    extra_compile_args = {'cxx': cxx_flags}
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
    if with_cuda and cuda_sources:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(('REPLK_WITH_CUDA', None))
        extra_compile_args['nvcc'] = ['-O3', '-std=c++20', '--expt-relaxed-constexpr',
                                      '-Xptxas=-warn-spills']
        if not os.getenv('TORCH_CUDA_ARCH_LIST'):
            os.environ['TORCH_CUDA_ARCH_LIST'] = default_cuda_arch_list(CUDA_HOME)
    return [
        extension(
            name='replk_mm._ext',
            sources=sources,
            include_dirs=[os.path.join(ROOT, CSRC, 'common')],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=['-fopenmp']),
        # The CUDA kernels compiled for the host (tests without a GPU): always built, C++ only.
        CppExtension(
            name='replk_mm._ext_cuda_emu',
            sources=sorted(glob.glob(os.path.join(CSRC, 'emulation', '*.cpp'))),
            include_dirs=[os.path.join(ROOT, CSRC, d) for d in ('common', 'cuda')],
            extra_compile_args={'cxx': ['-O2', '-std=c++20', '-fopenmp']},
            extra_link_args=['-fopenmp']),
    ]


def get_cmdclass() -> dict:
    if not get_extensions():
        return {}
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension.with_options(use_ninja=True)}


def read_requirements(name: str) -> list:
    path = os.path.join(ROOT, 'requirements', name)
    with open(path) as f:
        return [
            line.split('#')[0].strip() for line in f
            if line.split('#')[0].strip()
        ]


setup(
    name='replk_mm',
    version=read_version(),
    description='RepLKNet and UniRepLKNet for the OpenMMLab 2.x stack, '
    'with a fused large-kernel depth-wise convolution',
    long_description=open(os.path.join(ROOT, 'README.md')).read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    include_package_data=True,
    install_requires=read_requirements('runtime.txt'),
    extras_require={'tests': read_requirements('tests.txt'),
                    'deploy': read_requirements('deploy.txt')},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
    license='Apache-2.0',
)
