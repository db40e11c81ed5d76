"""The one compiled part: preprocess/_fstpath.c (docs/TEXT.md, "The exact search"). Everything
else is in pyproject.toml."""

from setuptools import Extension, setup

# No -ffast-math or -Ofast: the search must add and compare float32 exactly as OpenFst does.
setup(ext_modules=[Extension("preprocess._fstpath", sources=["preprocess/_fstpath.c"],
                             extra_compile_args=["-O2", "-fno-fast-math"])])
