"""Build fmsr: three packages and the optional compiled kernels of fmsr_infer."""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cpp_ext.build import build_ext_command, extension_modules  # noqa: E402

setup(ext_modules=extension_modules(), cmdclass={"build_ext": build_ext_command()})
