"""Build the compiled kernels of fmsr_infer for setup.py.

Two extension modules:
- `fmsr_infer._ext`, the CPU kernels (C++17, OpenMP when the compiler supports it,
  pybind11), always built.
- `fmsr_infer._ext_cuda`, the CUDA kernels, built when nvcc is found. nvcc compiles
  cpp_ext/cuda_kernels.cu, the host compiler compiles the pybind11 binding, and nvcc
  links both against the static CUDA runtime with its symbols hidden. The module then
  needs only the NVIDIA driver at run time: no torch, no libcudart.so, and no clash
  with the CUDA runtime that torch or cuda-python load. Linux only.

Environment variables:
    FMSR_CUDA: unset or empty builds the CUDA module when nvcc is found, `0` never
        builds it, `1` requires it and fails the build when nvcc is missing.
    CUDA_HOME or CUDA_PATH: toolkit root whose bin/nvcc is used. Without them, nvcc on
        PATH, then /usr/local/cuda/bin/nvcc.
    FMSR_CUDA_ARCHS: semicolon-separated SM versions to compile machine code for,
        default "80;86;90" (A100 and Ampere laptop GPUs, RTX 30xx, H100/H200); PTX for
        the last one is embedded too, so newer GPUs JIT-compile it.
    FMSR_VECTORIZE_REPORT: `1` adds -fopt-info-vec-optimized to the CPU build, which
        prints each loop that GCC vectorized.

Floating-point contract: both modules are compiled without FMA contraction
(-ffp-contract=off, nvcc --fmad=false) and without fast-math, so the noise is bit-exact
against fmsr_infer/noise.py and the other kernels round like their numpy references.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, has_flag
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from setuptools.dep_util import newer_group

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CUDA_ARCHS = ("80", "86", "90")

CPU_SOURCES = ["cpp_ext/cpu_kernels.cpp", "cpp_ext/cpu_module.cpp"]
CUDA_BINDING_SOURCES = ["cpp_ext/cuda_module.cpp"]
CUDA_SOURCES = ["cpp_ext/cuda_kernels.cu"]
# Headers, and this file for its flags: a change to any of them rebuilds both modules,
# and listing them here also puts them in the sdist.
DEPENDS = [
    "cpp_ext/build.py",
    "cpp_ext/cpu_kernels.h",
    "cpp_ext/cuda_kernels.h",
    "cpp_ext/dtype.h",
    "cpp_ext/half.h",
    "cpp_ext/noise_math.h",
    "cpp_ext/step_scalars.h",
]

UNIX_CPU_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
# NOTE: the MSVC flags are written from its documentation and have not been built here.
MSVC_CPU_FLAGS = ["/O2", "/fp:precise"]


def _path(relative: str) -> str:
    """Return a source path for setuptools: relative when run from the project root.

    Relative paths keep sdists clean. From another directory the path must be absolute,
    because distutils places objects of a '../' source outside the build folder.
    """
    if os.path.abspath(os.getcwd()) == ROOT:
        return relative
    return os.path.join(ROOT, relative)


def cuda_mode() -> str:
    """Read FMSR_CUDA: return 'auto', 'off' or 'on', raising ValueError otherwise."""
    value = os.environ.get("FMSR_CUDA", "").strip()
    modes = {"": "auto", "0": "off", "1": "on"}
    if value not in modes:
        raise ValueError(f"FMSR_CUDA must be unset, 0 or 1, got {value!r}")
    return modes[value]


def find_nvcc() -> str | None:
    """Return the nvcc to use (see the module docstring for the order), or None."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root:
            candidate = os.path.join(root, "bin", "nvcc")
            if os.access(candidate, os.X_OK):
                return candidate
            log.warning("%s=%s has no executable bin/nvcc; ignoring it", variable, root)
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    default = "/usr/local/cuda/bin/nvcc"
    return default if os.access(default, os.X_OK) else None


def cuda_archs() -> list[str]:
    """Read FMSR_CUDA_ARCHS, e.g. '80;86;90', into a list of SM versions."""
    value = os.environ.get("FMSR_CUDA_ARCHS", "").strip()
    if not value:
        return list(DEFAULT_CUDA_ARCHS)
    archs = [arch.strip() for arch in value.replace(",", ";").split(";") if arch.strip()]
    if not archs or not all(arch.isdigit() for arch in archs):
        raise ValueError(f"FMSR_CUDA_ARCHS must list SM versions like '80;86;90', got {value!r}")
    return archs


def nvcc_flags(archs: list[str]) -> list[str]:
    """Return nvcc's compile flags: machine code for each arch plus PTX of the last."""
    flags = [
        "-O3",
        "-std=c++17",
        "--fmad=false",
        "-Xcompiler",
        "-fPIC,-fvisibility=hidden",
        "-I" + os.path.join(ROOT, "cpp_ext"),
    ]
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return flags


class CudaExtension(Pybind11Extension):
    """A pybind11 extension whose .cu sources nvcc compiles and whose link nvcc does."""

    def __init__(self, name: str, sources: list[str], cuda_sources: list[str], **kwargs):
        super().__init__(name, sources, **kwargs)
        self.cuda_sources = cuda_sources


def cpu_extension() -> Pybind11Extension:
    """Return the extension of the CPU kernels, fmsr_infer._ext."""
    return Pybind11Extension(
        "fmsr_infer._ext",
        [_path(source) for source in CPU_SOURCES],
        include_dirs=[os.path.join(ROOT, "cpp_ext")],
        depends=[_path(header) for header in DEPENDS],
        cxx_std=17,
    )


def cuda_extension() -> CudaExtension:
    """Return the extension of the CUDA kernels, fmsr_infer._ext_cuda."""
    return CudaExtension(
        "fmsr_infer._ext_cuda",
        [_path(source) for source in CUDA_BINDING_SOURCES],
        cuda_sources=[_path(source) for source in CUDA_SOURCES],
        include_dirs=[os.path.join(ROOT, "cpp_ext")],
        depends=[_path(header) for header in DEPENDS],
        cxx_std=17,
    )


def extension_modules() -> list[Pybind11Extension]:
    """Return the extensions to build, following FMSR_CUDA (see the module docstring)."""
    modules = [cpu_extension()]
    mode = cuda_mode()
    if mode == "off":
        return modules
    nvcc = find_nvcc()
    if nvcc is None or not sys.platform.startswith("linux"):
        reason = (
            "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
            if nvcc is None
            else f"the CUDA build supports Linux only, not {sys.platform}"
        )
        if mode == "on":
            raise RuntimeError(f"FMSR_CUDA=1 requires the CUDA module, but {reason}")
        log.warning("not building fmsr_infer._ext_cuda: %s; set FMSR_CUDA=0 to skip it", reason)
        return modules
    modules.append(cuda_extension())
    return modules


class BuildExt(build_ext):
    """build_ext that adds the compiler's optimization and OpenMP flags and runs nvcc."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            compile_flags, link_flags = list(MSVC_CPU_FLAGS), []
            openmp_compile, openmp_link = ["/openmp"], []
        else:
            compile_flags, link_flags = list(UNIX_CPU_FLAGS), []
            openmp_compile, openmp_link = ["-fopenmp"], ["-fopenmp"]
            if os.environ.get("FMSR_VECTORIZE_REPORT") == "1":
                compile_flags.append("-fopt-info-vec-optimized")
        if has_flag(self.compiler, openmp_compile[0]):
            compile_flags += openmp_compile
            link_flags += openmp_link
        else:
            log.warning(
                "the C++ compiler does not accept %s, so the CPU kernels run on one thread",
                openmp_compile[0],
            )
        for ext in self.extensions:
            if isinstance(ext, CudaExtension):
                ext.extra_compile_args += [flag for flag in compile_flags if "openmp" not in flag]
            else:
                ext.extra_compile_args += compile_flags
                ext.extra_link_args += link_flags
        super().build_extensions()

    def get_source_files(self):
        # sdist collects the sources from here. The CUDA sources go in even when this
        # machine builds no CUDA module, so that an sdist made here still has them.
        files = super().get_source_files()
        for source in CUDA_BINDING_SOURCES + CUDA_SOURCES:
            if _path(source) not in files:
                files.append(_path(source))
        return files

    def build_extension(self, ext):
        if isinstance(ext, CudaExtension):
            self._build_cuda_extension(ext)
        else:
            super().build_extension(ext)

    def _build_cuda_extension(self, ext: CudaExtension) -> None:
        nvcc = find_nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc was not found; set CUDA_HOME or put nvcc on PATH")
        target = self.get_ext_fullpath(ext.name)
        inputs = ext.sources + ext.cuda_sources + list(ext.depends)
        if not (self.force or newer_group(inputs, target, "newer")):
            log.info("skipping %s (up to date)", ext.name)
            return

        # The binding: host compiler, pybind11 and Python headers, as for any extension.
        objects = self.compiler.compile(
            ext.sources,
            output_dir=self.build_temp,
            include_dirs=ext.include_dirs,
            extra_postargs=ext.extra_compile_args,
            depends=ext.depends,
        )

        # The kernels: nvcc.
        flags = nvcc_flags(cuda_archs())
        cuda_dir = os.path.join(self.build_temp, "cuda")
        self.mkpath(cuda_dir)
        for source in ext.cuda_sources:
            name = os.path.splitext(os.path.basename(source))[0]
            obj = os.path.join(cuda_dir, name + ".o")
            self.spawn([nvcc, "-c", source, "-o", obj, *flags])
            objects.append(obj)

        # nvcc links, so it finds its own static runtime. --exclude-libs hides that
        # runtime's symbols so that they cannot bind to another loaded libcudart.
        # Without relocatable device code there is nothing to device-link, and
        # -nodlink keeps nvcc from adding an empty cubin for its default arch.
        self.mkpath(os.path.dirname(target))
        self.spawn(
            [
                nvcc,
                "-shared",
                "-nodlink",
                "-o",
                target,
                *objects,
                "-cudart",
                "static",
                "-Xlinker",
                "--exclude-libs,ALL",
            ]
        )


def build_ext_command() -> type[build_ext]:
    """Return the build_ext command class for setup.py's cmdclass."""
    return BuildExt
