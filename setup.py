"""Build the optional C kernels (cmf/_speedups.c). Without a compiler cmf still works: the
byteplanes and huffman codecs fall back to numpy (same bytes, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cmf._speedups",
            ["cmf/_speedups.c"],
            optional=True,
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
