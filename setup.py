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


def get_extensions() -> list:
    sources = sorted(glob.glob(os.path.join(CSRC, 'bindings', '*.cpp')) +
                     glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    if not sources:
        return []
    from torch.utils.cpp_extension import CppExtension, CUDAExtension, CUDA_HOME
    import torch
    with_cuda = os.getenv('FORCE_CUDA', '0') == '1' or (
        torch.cuda.is_available() and CUDA_HOME is not None)
    cxx_flags = ['-O3', '-std=c++20', '-fopenmp']
    define_macros = []
    extension = CppExtension
    extra_compile_args = {'cxx': cxx_flags}
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
    if with_cuda and cuda_sources:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(('REPLK_WITH_CUDA', None))
        extra_compile_args['nvcc'] = ['-O3', '-std=c++20', '--expt-relaxed-constexpr']
    return [
        extension(
            name='replk_mm._ext',
            sources=sources,
            include_dirs=[os.path.join(ROOT, CSRC, 'common')],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=['-fopenmp'])
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
    extras_require={'tests': read_requirements('tests.txt')},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
    license='Apache-2.0',
)
