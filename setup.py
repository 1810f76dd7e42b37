"""Build hook: all metadata lives in pyproject.toml.

Two compiled pieces, both optional (a failed build prints a warning and dropkit
uses its Python route, or its pure-PyTorch reference kernel):

* ``dropkit.kernels._native``: the CPU dropout kernel. Plain C, no torch
  headers, so one build serves every torch version.
* ``dropkit.kernels._dispatch``: the eager op around it in C++ (seed draw,
  autograd node, kernel call without Python; see ``_dispatch.cpp``). It is
  compiled against torch's headers, so it is built only when torch is
  importable at build time (``pip install --no-build-isolation``, as
  ``make`` does) and serves only that torch version.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_DISPATCH = "dropkit.kernels._dispatch"


def _dispatch_extension() -> list[Extension]:
    if os.environ.get("DROPKIT_BUILD_DISPATCH", "1") == "0":
        return []
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        # An isolated build has no torch: the Python route serves.
        return []
    return [
        Extension(
            _DISPATCH,
            sources=["src/dropkit/kernels/_dispatch.cpp"],
            include_dirs=cpp_extension.include_paths(),
            library_dirs=cpp_extension.library_paths(),
            libraries=["c10", "torch", "torch_cpu", "torch_python"],
            define_macros=[
                ("TORCH_EXTENSION_NAME", "_dispatch"),
                ("TORCH_API_INCLUDE_EXTENSION_H", None),
                ("_GLIBCXX_USE_CXX11_ABI", str(int(torch._C._GLIBCXX_USE_CXX11_ABI))),
                ("DK_TORCH_VERSION", f'"{torch.__version__}"'),
            ],
            language="c++",
            optional=True,
        )
    ]


class _BuildExt(build_ext):
    # Flags depend on the compiler, which is only known at build time. No
    # -march=native: the AVX2 path is compiled with per-function target
    # attributes and chosen at run time, so the binary runs on any x86-64.
    def build_extensions(self) -> None:
        msvc = self.compiler.compiler_type == "msvc"
        for extension in self.extensions:
            if extension.name == _DISPATCH:
                # -g0: Python's own flags carry -g, which makes the module 13 MB.
                unix = ["-O2", "-g0", "-std=c++20", "-fvisibility=hidden"]
                extension.extra_compile_args = ["/O2", "/std:c++20"] if msvc else unix
            elif msvc:
                extension.extra_compile_args = ["/O2"]
            else:
                extension.extra_compile_args = ["-O3", "-std=c11", "-pthread"]
                extension.extra_link_args = ["-pthread"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "dropkit.kernels._native",
            sources=["src/dropkit/kernels/_native.c"],
            optional=True,
        ),
        *_dispatch_extension(),
    ],
    cmdclass={"build_ext": _BuildExt},
)
