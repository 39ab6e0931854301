"""Builds the C kernel library as the extension edgellm.kernels._C.

ISA paths are compiled into the same library with per-file target pragmas and chosen at run time, so one
build runs on any CPU of its architecture. The extension is optional: without a compiler the package still
installs and runs on the NumPy reference path.
"""

from glob import glob

from setuptools import Extension, setup

sources = sorted(glob("src/edgellm/kernels/c/**/*.c", recursive=True))

setup(
    ext_modules=[
        Extension(
            "edgellm.kernels._C",
            sources=sources,
            include_dirs=["src/edgellm/kernels/c"],
            extra_compile_args=["-O3", "-std=c11", "-pthread", "-fno-strict-aliasing", "-fno-trapping-math", "-Wall", "-Wno-unused-function"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
