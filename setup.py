"""Build hook: all metadata lives in pyproject.toml.

The one compiled piece is the native CPU dropout kernel,
``dropkit.kernels._native`` (plain C, no torch headers, so one build serves
every torch version). It is optional: without a working C compiler the build
prints a warning and dropkit falls back to its pure-PyTorch reference kernel.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class _BuildExt(build_ext):
    # Flags depend on the compiler, which is only known at build time. No
    # -march=native: the AVX2 path is compiled with per-function target
    # attributes and chosen at run time, so the binary runs on any x86-64.
    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            extra_compile, extra_link = ["/O2"], []
        else:
            extra_compile, extra_link = ["-O3", "-std=c11", "-pthread"], ["-pthread"]
        for extension in self.extensions:
            extension.extra_compile_args = extra_compile
            extension.extra_link_args = extra_link
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "dropkit.kernels._native",
            sources=["src/dropkit/kernels/_native.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": _BuildExt},
)
