"""Extension modules of fmsr_infer (placeholder until the kernels land)."""

from setuptools.command.build_ext import build_ext


def extension_modules():
    return []


def build_ext_command():
    return build_ext
