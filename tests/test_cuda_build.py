"""The CUDA kernels build with this machine's nvcc, and the build switches behave."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import Distribution

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpp_ext import build

NVCC = build.find_nvcc()
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit absent)")
KERNEL_SOURCE = REPO / "cpp_ext" / "cuda_kernels.cu"


def find_cuobjdump() -> str | None:
    candidates = [shutil.which("cuobjdump")]
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append(os.path.join(os.environ[variable], "bin", "cuobjdump"))
    candidates.append("/usr/local/cuda/bin/cuobjdump")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def cuda_module_path(tmp_path_factory) -> Path:
    """Build fmsr_infer._ext_cuda into a temporary folder, as setup.py would."""
    root = tmp_path_factory.mktemp("cuda_build")
    dist = Distribution(
        {
            "name": "fmsr-cuda-build-test",
            "ext_modules": [build.cuda_extension()],
            "cmdclass": {"build_ext": build.build_ext_command()},
        }
    )
    command = dist.get_command_obj("build_ext")
    command.build_lib = str(root / "lib")
    command.build_temp = str(root / "temp")
    command.ensure_finalized()
    command.run()
    (path,) = (root / "lib" / "fmsr_infer").glob("_ext_cuda*")
    return path


@requires_nvcc
def test_cuda_extension_builds(cuda_module_path):
    assert cuda_module_path.stat().st_size > 0


def run_with_module(module_path: Path, body: str) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter where `module` is the built extension."""
    loader = (
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location(\n"
        f"    'fmsr_infer._ext_cuda', {str(module_path)!r}\n"
        ")\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", loader + body], check=False, capture_output=True, text=True
    )


@requires_nvcc
def test_cuda_module_imports_without_torch(cuda_module_path):
    # Importing torch fails in this interpreter, so the module must not need it.
    body = "print(sorted(name for name in dir(module) if not name.startswith('_')))\n"
    result = run_with_module(cuda_module_path, "import sys\nsys.modules['torch'] = None\n" + body)
    assert result.returncode == 0, result.stderr
    expected = [
        "blend_tile",
        "euler_step",
        "euler_step_x1",
        "gaussian_noise",
        "heun_correct",
        "heun_correct_x1",
        "heun_predict",
        "heun_predict_x1",
        "midpoint_step_x1",
        "normalize_blend",
        "state_to_image",
        "upsample",
    ]
    assert result.stdout.strip() == str(expected)


@requires_nvcc
def test_cuda_module_validates_before_launch(cuda_module_path):
    body = (
        "calls = (\n"
        "    lambda: module.euler_step(x=0, v=8, v_dtype='float32', n=4, dt=0.1, stream=0),\n"
        "    lambda: module.euler_step(x=8, v=8, v_dtype='float64', n=4, dt=0.1, stream=0),\n"
        "    lambda: module.blend_tile(8, 8, 3, 4, 4, 8, 'float32', 8, 2, 2, 3, 3, 0),\n"
        "    lambda: module.midpoint_step_x1(8, 0, 8, 'float16', 4, 0.5, 0.1, 0.05, 0),\n"
        "    lambda: module.midpoint_step_x1(8, 8, 8, 'float16', 4, 0.5, 0.1, 0.0, 0),\n"
        ")\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as error:\n"
        "        print('ValueError:', error)\n"
    )
    result = run_with_module(cuda_module_path, body)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "ValueError: x is a null pointer"
    assert "v_dtype must be one of" in lines[1]
    assert "outside the accumulator" in lines[2]
    assert lines[3] == "ValueError: x_mid is a null pointer"
    assert lines[4].startswith("ValueError: floor must be positive")


@requires_nvcc
@pytest.mark.skipif(
    os.path.exists("/dev/nvidiactl"), reason="a GPU driver is present; a bogus launch would run"
)
def test_cuda_launch_without_driver_raises(cuda_module_path):
    body = (
        "try:\n"
        "    module.gaussian_noise(\n"
        "        out=8, seed=0, channels=1, height=1, width=1, row0=0, col0=0, stream=0\n"
        "    )\n"
        "except RuntimeError as error:\n"
        "    print('RuntimeError:', error)\n"
    )
    result = run_with_module(cuda_module_path, body)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("RuntimeError: CUDA launch of gaussian_noise failed")


@requires_nvcc
@pytest.mark.skipif(find_cuobjdump() is None, reason="cuobjdump not found")
def test_cuda_module_embeds_target_archs(cuda_module_path):
    cuobjdump = find_cuobjdump()
    elf = subprocess.run(
        [cuobjdump, "--list-elf", str(cuda_module_path)], capture_output=True, text=True, check=True
    ).stdout
    ptx = subprocess.run(
        [cuobjdump, "--list-ptx", str(cuda_module_path)], capture_output=True, text=True, check=True
    ).stdout
    assert sorted(set(re.findall(r"sm_(\d+)\.cubin", elf))) == ["80", "86", "90"]
    assert re.findall(r"sm_(\d+)\.ptx", ptx) == ["90"]


@requires_nvcc
def test_cuda_module_hides_runtime_symbols(cuda_module_path):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    exported = subprocess.run(
        [nm, "-D", "--defined-only", str(cuda_module_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "PyInit__ext_cuda" in exported
    assert not re.search(r"\bcuda[A-Z]\w*", exported)


@requires_nvcc
def test_cuda_ptx_has_no_fused_multiply_add(tmp_path):
    # The noise is bit-exact only if no multiply-add is contracted into an FMA.
    ptx = tmp_path / "kernels.ptx"
    flags = [f for f in build.nvcc_flags(["80"]) if f != "-gencode" and not f.startswith("arch=")]
    subprocess.run(
        [NVCC, "-ptx", "-arch=compute_80", str(KERNEL_SOURCE), "-o", str(ptx), *flags],
        check=True,
        capture_output=True,
    )
    text = ptx.read_text()
    assert "gaussian_noise_kernel" in text
    assert not re.search(r"\bfma\.", text)


# ---------------------------------------------------------------------------------
# FMSR_CUDA and the nvcc lookup


def extension_names() -> list[str]:
    return [ext.name for ext in build.extension_modules()]


def test_fmsr_cuda_off_builds_cpu_only(monkeypatch):
    monkeypatch.setenv("FMSR_CUDA", "0")
    assert extension_names() == ["fmsr_infer._ext"]


def test_fmsr_cuda_on_without_nvcc_fails(monkeypatch):
    monkeypatch.setenv("FMSR_CUDA", "1")
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="FMSR_CUDA=1 .* nvcc was not found"):
        build.extension_modules()


def test_auto_without_nvcc_warns_and_skips(monkeypatch, caplog):
    monkeypatch.delenv("FMSR_CUDA", raising=False)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    assert extension_names() == ["fmsr_infer._ext"]
    assert "not building fmsr_infer._ext_cuda" in caplog.text


@requires_nvcc
def test_auto_with_nvcc_adds_cuda_module(monkeypatch):
    monkeypatch.delenv("FMSR_CUDA", raising=False)
    assert extension_names() == ["fmsr_infer._ext", "fmsr_infer._ext_cuda"]


def test_invalid_fmsr_cuda_rejected(monkeypatch):
    monkeypatch.setenv("FMSR_CUDA", "yes")
    with pytest.raises(ValueError, match="FMSR_CUDA"):
        build.extension_modules()


def test_cuda_archs_from_environment(monkeypatch):
    monkeypatch.setenv("FMSR_CUDA_ARCHS", "86")
    assert build.cuda_archs() == ["86"]
    flags = " ".join(build.nvcc_flags(build.cuda_archs()))
    assert "arch=compute_86,code=sm_86" in flags
    assert "arch=compute_86,code=compute_86" in flags
    assert "--fmad=false" in flags


def test_default_cuda_archs(monkeypatch):
    monkeypatch.delenv("FMSR_CUDA_ARCHS", raising=False)
    assert build.cuda_archs() == ["80", "86", "90"]


def test_invalid_cuda_archs_rejected(monkeypatch):
    monkeypatch.setenv("FMSR_CUDA_ARCHS", "sm_80")
    with pytest.raises(ValueError, match="FMSR_CUDA_ARCHS"):
        build.cuda_archs()
