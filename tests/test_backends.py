"""Backend choice and its messages, and the GPU loop's host-side logic.

The CPU tests use the ONNX Runtime that is installed here. A fake `tensorrt` module
replaces the real one only where the test is about the decision logic (which backend,
which message), never for an engine run. The GPU tests at the end skip without a CUDA GPU.
"""

from __future__ import annotations

import ctypes
import enum
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fmsr_infer import backend_trt, backends, gpu_loop
from fmsr_infer.backend_ort import OrtBackend
from fmsr_infer.backends import BACKENDS, BackendUnavailable, create_backend, create_gpu_loop
from fmsr_infer.model_info import load_info


@pytest.fixture(scope="module")
def tiny_info(tiny_onnx):
    return load_info(tiny_onnx)


def _backend_records(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "fmsr_infer.backends" and r.getMessage().startswith("backend:")
    ]


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A tensorrt module and a GPU for the decision logic only (nothing runs on them)."""
    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "11.4.0.106"
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    facts = gpu_loop.GpuFacts(0, "NVIDIA GeForce RTX 2050", "8.6", 4 * 2**30)
    monkeypatch.setattr(gpu_loop, "gpu_facts", lambda device=0: facts)
    return fake_trt


def _write_engine(model_path: Path, info, **changes) -> Path:
    engine = backend_trt.engine_path_for(model_path)
    engine.write_bytes(b"not a real plan")
    meta = backend_trt.EngineMetadata(
        format=backend_trt.ENGINE_FORMAT,
        tensorrt_version="11.4.0.106",
        gpu_name="NVIDIA GeForce RTX 2050",
        compute_capability="8.6",
        precision="fp16",
        profile={"min": [1, 4, 4], "opt": [2, 128, 128], "max": [2, 128, 128]},
        onnx_file=engine.with_suffix(".onnx").name,
        onnx_sha256="f" * 64,
        source_onnx_sha256=info.onnx_sha256,
        device_memory_bytes=1,
        engine_bytes=1,
        workspace_bytes=1,
        builder_optimization_level=3,
        gpu_memory_budget_bytes=1,
        reserve_bytes=1,
    ).to_dict()
    meta.update(changes)
    backend_trt.engine_metadata_path(engine).write_text(json.dumps(meta))
    return engine


@pytest.fixture
def model_copy(tiny_onnx, tmp_path):
    """The tiny model in a folder of its own, so engines written beside it stay local."""
    model = tmp_path / tiny_onnx.name
    model.write_bytes(tiny_onnx.read_bytes())
    model.with_suffix(".json").write_text(tiny_onnx.with_suffix(".json").read_text())
    return model


# ---------------------------------------------------------------------------------
# Selection


def test_backend_names():
    assert BACKENDS == ("auto", "tensorrt", "onnxruntime-cuda", "cpu")
    assert backends.AUTO_ORDER == BACKENDS[1:]


def test_unknown_backend_rejected(tiny_onnx, tiny_info):
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        create_backend("cuda", tiny_onnx, tiny_info)


def test_cpu_backend_runs(tiny_onnx, tiny_info):
    backend = create_backend("cpu", tiny_onnx, tiny_info, threads=1)
    assert isinstance(backend, OrtBackend)
    x = np.zeros((1, 3, 16, 16), np.float32)
    out = backend(x, x, np.zeros(1, np.float32))
    assert out.shape == (1, 3, 16, 16)
    assert create_gpu_loop(backend) is None


def test_forced_tensorrt_missing(no_tensorrt, tiny_onnx, tiny_info):
    with pytest.raises(
        BackendUnavailable, match=r"TensorRT is not installed.*pip install 'fmsr\[gpu\]'"
    ):
        create_backend("tensorrt", tiny_onnx, tiny_info)


def test_forced_tensorrt_without_engine(fake_gpu, model_copy, tiny_info):
    with pytest.raises(BackendUnavailable, match="no TensorRT engine") as raised:
        create_backend("tensorrt", model_copy, tiny_info)
    assert "python -m fmsr_export.trt_build" in str(raised.value)


def test_forced_tensorrt_stale_engine(fake_gpu, model_copy, tiny_info):
    _write_engine(model_copy, tiny_info, tensorrt_version="10.13.0.35")
    with pytest.raises(
        backend_trt.EngineMismatchError, match="TensorRT 10.13.0.35, but TensorRT 11.4.0.106"
    ):
        create_backend("tensorrt", model_copy, tiny_info)


def test_forced_onnxruntime_cuda_without_provider(tiny_onnx, tiny_info):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="no CUDA provider") as raised:
        create_backend("onnxruntime-cuda", tiny_onnx, tiny_info)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in str(raised.value)


def test_onnxruntime_silent_cpu_fallback_detected(monkeypatch, tiny_onnx, tiny_info):
    """ONNX Runtime may run a CUDA session on the CPU without raising; that is refused."""
    import onnxruntime

    class CpuOnlySession:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", CpuOnlySession)
    with pytest.raises(
        BackendUnavailable,
        match=r"could not start CUDA and fell back to \['CPUExecutionProvider'\]",
    ):
        create_backend("onnxruntime-cuda", tiny_onnx, tiny_info)


def test_auto_falls_back_to_cpu_logged_once(no_tensorrt, tiny_onnx, tiny_info, caplog):
    caplog.set_level(logging.INFO, logger="fmsr_infer")
    backend = create_backend("auto", tiny_onnx, tiny_info)
    if backend.name != "onnxruntime-cpu":
        pytest.skip(f"a GPU backend loaded here: {backend.name}")
    records = _backend_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert message.startswith(
        "backend: onnxruntime-cpu (auto; skipped tensorrt: TensorRT is not installed"
    )
    assert "onnxruntime-cuda:" in message


def test_auto_warns_about_stale_engine(fake_gpu, model_copy, tiny_info, caplog):
    _write_engine(model_copy, tiny_info, gpu_name="NVIDIA GeForce RTX 3060")
    caplog.set_level(logging.INFO, logger="fmsr_infer")
    backend = create_backend("auto", model_copy, tiny_info)
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "not using tensorrt" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "built for the GPU NVIDIA GeForce RTX 3060" in warnings[0].getMessage()
    assert "Rebuild it on this machine" in warnings[0].getMessage()
    assert backend.name in ("onnxruntime-cuda", "onnxruntime-cpu")
    assert len(_backend_records(caplog)) == 1


def test_auto_skips_engine_without_json(fake_gpu, model_copy, tiny_info, caplog):
    engine = _write_engine(model_copy, tiny_info)
    backend_trt.engine_metadata_path(engine).unlink()
    caplog.set_level(logging.INFO, logger="fmsr_infer")
    backend = create_backend("auto", model_copy, tiny_info)
    assert backend.name in ("onnxruntime-cuda", "onnxruntime-cpu")
    assert "engine metadata" in caplog.text
    assert "not found beside" in caplog.text


def test_auto_engine_path_uses_onnx_for_cpu(no_tensorrt, model_copy, tiny_info):
    """--model x_fp16.engine still runs on the CPU from the ONNX beside it."""
    engine = _write_engine(model_copy, tiny_info)
    onnx_beside = engine.with_suffix(".onnx")
    onnx_beside.write_bytes(model_copy.read_bytes())
    backend = backends._create("cpu", engine, tiny_info, threads=1)
    assert isinstance(backend, OrtBackend)


def test_fp16_sibling_needs_matching_source(model_copy, tiny_info, caplog):
    from fmsr_infer.backend_ort_cuda import fp16_sibling

    assert fp16_sibling(model_copy, tiny_info) is None
    sibling = model_copy.with_name(model_copy.stem + "_fp16.onnx")
    sibling.write_bytes(b"onnx")
    sibling.with_suffix(".json").write_text(json.dumps({"source_onnx_sha256": "0" * 64}))
    with caplog.at_level(logging.WARNING):
        assert fp16_sibling(model_copy, tiny_info) is None
    assert "made from another model" in caplog.text
    sibling.with_suffix(".json").write_text(
        json.dumps({"source_onnx_sha256": tiny_info.onnx_sha256})
    )
    assert fp16_sibling(model_copy, tiny_info) == sibling


# ---------------------------------------------------------------------------------
# GPU loop, host side


@pytest.mark.parametrize("sampler", gpu_loop.GPU_SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 8])
def test_loop_calls_match_samplers(sampler, steps):
    from fmsr_infer.samplers import network_calls, uniform_grid

    times = gpu_loop.call_times(uniform_grid(steps), sampler)
    assert len(times) == network_calls(sampler, steps)
    assert times[0] == 0.0


def test_loop_call_times_heun():
    assert gpu_loop.call_times([0.0, 0.5, 1.0], "heun") == [0.0, 0.5, 0.5, 1.0]
    assert gpu_loop.call_times([0.0, 0.5, 1.0], "heun_euler_last") == [0.0, 0.5, 0.5]
    assert gpu_loop.call_times([0.0, 0.5, 1.0], "euler") == [0.0, 0.5]


def test_loop_call_times_midpoint():
    assert gpu_loop.call_times([0.0, 0.5, 1.0], "midpoint") == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("sampler", gpu_loop.GPU_SAMPLERS)
def test_loop_call_times_equal_sampler_times(sampler):
    from fmsr_infer.samplers import get_sampler, make_grid

    grid = make_grid("shifted", 5, shift=3.0)
    seen = []

    def velocity(x, t):
        seen.append(t)
        return x

    get_sampler(sampler)(velocity, np.zeros(1, np.float32), grid)
    assert gpu_loop.call_times(grid, sampler) == seen


@pytest.mark.parametrize(
    ("lr_h", "lr_w", "multiple"), [(5, 7, 8), (3, 3, 8), (1, 2, 16), (6, 6, 4)]
)
def test_padded_tables_match_padding(lr_h, lr_w, multiple):
    """Padded tables give the padded conditioning of the CPU path (tiling.pad_to_multiple)."""
    from fmsr_infer.resize import upsample_tables
    from fmsr_infer.tiling import pad_to_multiple

    def apply(tables, image):
        row_w, row_i, col_w, col_i = tables
        rows = np.einsum("ip,ipj->ij", row_w, image[row_i])
        return np.einsum("jq,ijq->ij", col_w, rows[:, col_i])

    lr = np.random.default_rng(0).uniform(0, 1, (lr_h, lr_w))
    tables = upsample_tables(lr_h, lr_w)
    expected, _, _ = pad_to_multiple(apply(tables, lr)[None], multiple)
    out_h, out_w = expected.shape[1:]
    padded = gpu_loop.padded_tables(tables, out_h, out_w)
    assert padded[0].shape[0] == out_h
    assert padded[2].shape[0] == out_w
    np.testing.assert_allclose(apply(padded, lr), expected[0], rtol=0, atol=1e-6)


def test_padded_tables_reject_smaller():
    from fmsr_infer.resize import upsample_tables

    with pytest.raises(ValueError, match="larger than"):
        gpu_loop.padded_tables(upsample_tables(4, 4), 8, 16)


# ---------------------------------------------------------------------------------
# GPU loop logic on an emulated device
#
# GpuLoop's orchestration (buffer offsets, the time buffer, tiling and blending, CUDA
# graph capture, replay and fallback) runs here against the numpy pipeline. Host
# memory replaces device memory, and the numpy kernel references of fmsr_infer.kernels
# replace the CUDA kernels. This tests the logic only. The CUDA kernels, cuda-python
# and the GPU run in the test after this section and in benchmarks/gpu_loop_check.py.


def _view(ptr: int, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(ptr)
    return np.ctypeslib.as_array(raw).view(dtype).reshape(shape)


class EmulatedCudart:
    """The calls of cuda.bindings.runtime that GpuLoop makes, on host memory.

    Launches run at once, unless a capture is recording them for a graph to replay.
    """

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self):
        self.allocations: dict[int, np.ndarray] = {}
        self.recording: list | None = None
        self.captures = 0
        self.replays = 0

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def launch(self, action) -> None:
        if self.recording is not None:
            self.recording.append(action)
        else:
            action()

    def cudaMalloc(self, nbytes):
        memory = np.full(nbytes, 0xFF, np.uint8)  # garbage, as fresh device memory may be
        self.allocations[memory.ctypes.data] = memory
        return self._ok(memory.ctypes.data)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr):
        self.allocations.pop(int(ptr), None)
        return self._ok()

    cudaFreeHost = cudaFree

    def cudaStreamCreateWithFlags(self, flags):
        return self._ok(1)

    def cudaStreamSynchronize(self, stream):
        return self._ok()

    def cudaStreamDestroy(self, stream):
        return self._ok()

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.launch(lambda: ctypes.memmove(dst, src, nbytes))
        return self._ok()

    def cudaMemsetAsync(self, ptr, value, nbytes, stream):
        self.launch(lambda: ctypes.memset(ptr, value, nbytes))
        return self._ok()

    def cudaStreamBeginCapture(self, stream, mode):
        self.recording = []
        self.captures += 1
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        graph, self.recording = self.recording, None
        return self._ok(graph)

    def cudaGraphInstantiate(self, graph, flags):
        return self._ok(list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):
        self.replays += 1
        for action in graph_exec:
            action()
        return self._ok()

    def cudaGraphDestroy(self, graph):
        return self._ok()

    cudaGraphExecDestroy = cudaGraphDestroy

    def cudaGetLastError(self):
        return self._ok()

    def cudaGetErrorString(self, error):
        return self._ok(b"emulated error")


def emulated_kernels(cudart: EmulatedCudart):
    """fmsr_infer._ext_cuda's functions (same arguments) on the numpy references."""
    from fmsr_infer import kernels, noise

    f32 = np.float32

    def gaussian_noise(out, seed, channels, height, width, row0, col0, stream):
        def run():
            _view(out, f32, (channels, height, width))[...] = noise.gaussian_noise(
                seed, channels, height, width, row0, col0
            )

        cudart.launch(run)

    def upsample(
        lr,
        lr_dtype,
        batch,
        in_h,
        in_w,
        channels,
        row_w,
        row_i,
        table_rows,
        row_taps,
        col_w,
        col_i,
        table_cols,
        col_taps,
        out_row0,
        out_col0,
        out_h,
        out_w,
        out,
        out_dtype,
        stream,
    ):
        def run():
            kernels._numpy_upsample(
                _view(lr, lr_dtype, (batch, in_h, in_w, channels)),
                _view(row_w, f32, (table_rows, row_taps)),
                _view(row_i, np.int32, (table_rows, row_taps)),
                _view(col_w, f32, (table_cols, col_taps)),
                _view(col_i, np.int32, (table_cols, col_taps)),
                _view(out, out_dtype, (batch, channels, out_h, out_w)),
                out_row0,
                out_col0,
            )

        cudart.launch(run)

    def euler_step(x, v, v_dtype, n, dt, stream):
        cudart.launch(
            lambda: kernels.euler_step(
                _view(x, f32, (n,)), _view(v, v_dtype, (n,)), dt, backend="numpy"
            )
        )

    def heun_predict(x, v, v_dtype, x_pred, n, dt, stream):
        cudart.launch(
            lambda: kernels.heun_predict(
                _view(x, f32, (n,)),
                _view(v, v_dtype, (n,)),
                dt,
                out=_view(x_pred, f32, (n,)),
                backend="numpy",
            )
        )

    def heun_correct(x, v, v_pred, v_dtype, n, dt, stream):
        cudart.launch(
            lambda: kernels.heun_correct(
                _view(x, f32, (n,)),
                _view(v, v_dtype, (n,)),
                _view(v_pred, v_dtype, (n,)),
                dt,
                backend="numpy",
            )
        )

    def euler_step_x1(x, x1_hat, x1_dtype, n, t, dt, floor, stream):
        cudart.launch(
            lambda: kernels.euler_step_x1(
                _view(x, f32, (n,)), _view(x1_hat, x1_dtype, (n,)), t, dt, floor, backend="numpy"
            )
        )

    def heun_predict_x1(x, x1_hat, x1_dtype, x_pred, n, t, dt, floor, stream):
        cudart.launch(
            lambda: kernels.heun_predict_x1(
                _view(x, f32, (n,)),
                _view(x1_hat, x1_dtype, (n,)),
                t,
                dt,
                floor,
                out=_view(x_pred, f32, (n,)),
                backend="numpy",
            )
        )

    def heun_correct_x1(x, x1_hat, x_pred, x1_hat_pred, x1_dtype, n, t, dt, floor, stream):
        cudart.launch(
            lambda: kernels.heun_correct_x1(
                _view(x, f32, (n,)),
                _view(x1_hat, x1_dtype, (n,)),
                _view(x_pred, f32, (n,)),
                _view(x1_hat_pred, x1_dtype, (n,)),
                t,
                dt,
                floor,
                backend="numpy",
            )
        )

    def midpoint_step_x1(x, x_mid, x1_hat_mid, x1_dtype, n, t, dt, floor, stream):
        cudart.launch(
            lambda: kernels.midpoint_step_x1(
                _view(x, f32, (n,)),
                _view(x_mid, f32, (n,)),
                _view(x1_hat_mid, x1_dtype, (n,)),
                t,
                dt,
                floor,
                backend="numpy",
            )
        )

    def state_to_image(
        x,
        upsample,
        upsample_dtype,
        batch,
        channels,
        height,
        width,
        residual_scale,
        out,
        out_dtype,
        stream,
    ):
        shape = (batch, channels, height, width)

        def run():
            kernels.state_to_image(
                _view(x, f32, shape),
                _view(upsample, upsample_dtype, shape) if upsample else None,
                residual_scale,
                dtype=out_dtype,
                out=_view(out, out_dtype, (batch, height, width, channels)),
                backend="numpy",
            )

        cudart.launch(run)

    def blend_tile(
        accum,
        weight_sum,
        channels,
        height,
        width,
        tile,
        tile_dtype,
        weight,
        tile_h,
        tile_w,
        row0,
        col0,
        stream,
    ):
        cudart.launch(
            lambda: kernels.blend_tile(
                _view(accum, f32, (channels, height, width)),
                _view(weight_sum, f32, (height, width)),
                _view(tile, tile_dtype, (channels, tile_h, tile_w)),
                _view(weight, f32, (tile_h, tile_w)),
                row0,
                col0,
                backend="numpy",
            )
        )

    def normalize_blend(accum, weight_sum, out, channels, height, width, stream):
        cudart.launch(
            lambda: kernels.normalize_blend(
                _view(accum, f32, (channels, height, width)),
                _view(weight_sum, f32, (height, width)),
                out=_view(out, f32, (channels, height, width)),
                backend="numpy",
            )
        )

    return types.SimpleNamespace(
        **{name: value for name, value in locals().items() if callable(value)}
    )


class HostRunner:
    """A NetworkRunner that runs a numpy backend on emulated device buffers."""

    name = "emulated"
    cond_dtype = "float32"
    output_dtype = "float32"
    max_shape = None

    def __init__(
        self, cudart: EmulatedCudart, backend, capturable: bool = True, fail_capture: bool = False
    ):
        self.cudart = cudart
        self.backend = backend
        self.capturable = capturable
        self.fail_capture = fail_capture
        self.calls = 0

    def prepare(self, batch, height, width):
        return (batch, height, width)

    def enqueue(self, shape, x_ptr, cond_ptr, t_ptr, out_ptr, stream):
        if self.fail_capture and self.cudart.recording is not None:
            raise RuntimeError("this runner cannot be captured")
        batch, height, width = shape
        image = (batch, 3, height, width)

        def run():
            self.calls += 1
            x_t = _view(x_ptr, np.float32, image).copy()
            cond = _view(cond_ptr, np.float32, image).copy()
            t = _view(t_ptr, np.float32, (batch,)).copy()
            _view(out_ptr, np.float32, image)[...] = self.backend(x_t, cond, t)

        self.cudart.launch(run)


@pytest.fixture
def emulated_device(monkeypatch):
    from fmsr_infer import kernels

    cudart = EmulatedCudart()
    monkeypatch.setattr(gpu_loop, "import_cudart", lambda: cudart)
    monkeypatch.setattr(kernels, "load_cuda_kernels", lambda: emulated_kernels(cudart))
    return cudart


def analytic_network(x_t, cond, t):
    """A smooth stand-in for the network whose output depends on x_t, cond and t.

    The tiny trained model outputs nearly zero everywhere, which would hide a wrong
    tile offset or a wrong time; this function does not.
    """
    t4 = np.asarray(t, np.float32)[:, None, None, None]
    return (0.8 * np.tanh(2.0 * cond) + 0.3 * x_t * (1.0 + t4) - 0.2 * t4).astype(np.float32)


def _cpu_image(backend, info, lr, sampler, steps, tile, overlap, batch, temperature=1.0):
    from fmsr_infer.pipeline import SampleSettings, Upscaler
    from fmsr_infer.tiling import TileSettings

    settings = SampleSettings(steps=steps, sampler=sampler, seed=5, temperature=temperature)
    result = Upscaler(backend, info).upscale(
        lr.astype(np.float32) / 255, settings, TileSettings(tile=tile, overlap=overlap, batch=batch)
    )
    return np.floor(np.clip(result.image, 0, 1) * 255 + 0.5).astype(np.uint8)


LOOP_CASES = [
    ("x1", "residual", "euler", 256, 1.0),
    ("x1", "residual", "euler", 48, 1.0),
    ("x1", "residual", "heun", 48, 0.0),
    ("x1", "residual", "heun_euler_last", 64, 1.0),
    ("x1", "residual", "midpoint", 48, 1.0),
    ("x1", "image", "midpoint", 256, 0.5),
    ("velocity", "image", "euler", 48, 1.0),
    ("velocity", "image", "heun", 64, 0.5),
    ("velocity", "image", "midpoint", 64, 1.0),
]


@pytest.mark.parametrize(("prediction", "target", "sampler", "tile", "temperature"), LOOP_CASES)
def test_emulated_loop_matches_pipeline(
    emulated_device, tiny_info, prediction, target, sampler, tile, temperature
):
    from dataclasses import replace

    from fmsr_infer.samplers import network_calls, uniform_grid
    from tests.conftest import photo_arrays

    info = replace(tiny_info, prediction=prediction, target=target)
    lr = np.ascontiguousarray(photo_arrays()["chelsea"][60:84, 100:130])  # 96x120 output
    runner = HostRunner(emulated_device, analytic_network)
    loop = gpu_loop.GpuLoop(runner, info, tile=tile, max_batch=3, overlap=16)
    expected = _cpu_image(
        analytic_network, info, lr, sampler, 3, loop.tile, loop.overlap, 3, temperature
    )

    # Three images: plain launches, then capture and replay.
    for _ in range(3):
        image, calls, tiles = loop.upscale(
            lr, uniform_grid(3), sampler, seed=5, temperature=temperature
        )
        assert image.shape == expected.shape
        assert np.max(np.abs(image.astype(int) - expected.astype(int))) <= 1
    assert calls == network_calls(sampler, 3)
    assert tiles == (1 if tile == 256 else len(_tiles_of(96, 120, loop)))
    assert emulated_device.captures >= 1
    assert emulated_device.replays >= 1
    captured, failed = loop.graph_counts()
    assert captured >= 1
    assert failed == 0


def test_emulated_loop_runs_real_network(emulated_device, tiny_onnx, tiny_info):
    """The tiny ONNX network through the loop, tiled, against the pipeline."""
    from fmsr_infer.samplers import uniform_grid
    from tests.conftest import photo_arrays

    lr = np.ascontiguousarray(photo_arrays()["astronaut"][40:60, 200:230])
    cpu = OrtBackend(tiny_onnx, tiny_info, threads=1)
    loop = gpu_loop.GpuLoop(
        HostRunner(emulated_device, cpu), tiny_info, tile=48, max_batch=2, overlap=16
    )
    expected = _cpu_image(cpu, tiny_info, lr, "heun", 2, 48, 16, 2)
    image, calls, _ = loop.upscale(lr, uniform_grid(2), "heun", seed=5, temperature=1.0)
    assert calls == 4
    assert np.max(np.abs(image.astype(int) - expected.astype(int))) <= 1


def _tiles_of(height, width, loop):
    from fmsr_infer.tiling import TileSettings, plan_tiles

    return plan_tiles(height, width, TileSettings(loop.tile, loop.overlap, loop.max_batch), 4)


def test_emulated_loop_capture_fallback(emulated_device, tiny_info, caplog):
    from fmsr_infer.samplers import uniform_grid
    from tests.conftest import photo_arrays

    lr = np.ascontiguousarray(photo_arrays()["rocket"][:20, :20])
    runner = HostRunner(emulated_device, analytic_network, fail_capture=True)
    loop = gpu_loop.GpuLoop(runner, tiny_info, tile=48, max_batch=2)
    expected = _cpu_image(analytic_network, tiny_info, lr, "euler", 2, 48, loop.overlap, 2)
    with caplog.at_level(logging.WARNING, logger="fmsr_infer.gpu_loop"):
        for _ in range(2):
            image, _, _ = loop.upscale(lr, uniform_grid(2), "euler", seed=5, temperature=1.0)
            assert np.max(np.abs(image.astype(int) - expected.astype(int))) <= 1
    assert "CUDA graph capture failed" in caplog.text
    assert "cannot be captured" in caplog.text
    assert loop.graph_counts()[0] == 0
    assert loop.graph_counts()[1] >= 1
    assert emulated_device.replays == 0


def test_emulated_loop_uncapturable_runner(emulated_device, tiny_info):
    from fmsr_infer.samplers import uniform_grid

    runner = HostRunner(emulated_device, analytic_network, capturable=False)
    loop = gpu_loop.GpuLoop(runner, tiny_info, tile=64, max_batch=1)
    lr = np.zeros((8, 8, 3), np.uint8)
    for _ in range(3):
        loop.upscale(lr, uniform_grid(2), "euler")
    assert emulated_device.captures == 0


def test_emulated_loop_rejects_sampler(emulated_device, tiny_info):
    loop = gpu_loop.GpuLoop(
        HostRunner(emulated_device, analytic_network), tiny_info, tile=64, max_batch=1
    )
    with pytest.raises(ValueError, match="'rk4' is not implemented by the CUDA kernels"):
        loop.upscale(np.zeros((8, 8, 3), np.uint8), [0.0, 1.0], "rk4")


# ---------------------------------------------------------------------------------
# GPU loop on a CUDA device


def _cuda_loop_reason():
    try:
        from fmsr_infer import _ext_cuda  # noqa: F401
    except ImportError as exc:
        return f"fmsr_infer._ext_cuda is not built ({exc})"
    try:
        gpu_loop.gpu_facts()
    except gpu_loop.GpuUnavailable as exc:
        return str(exc)
    return None


def test_gpu_loop_matches_cpu_pipeline(tiny_onnx, tiny_info):
    """The whole loop on ONNX Runtime CUDA against the CPU pipeline, one tile and several."""
    reason = _cuda_loop_reason()
    if reason:
        pytest.skip(reason)
    try:
        gpu_backend = create_backend("onnxruntime-cuda", tiny_onnx, tiny_info)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    from fmsr_infer.pipeline import SampleSettings, Upscaler
    from fmsr_infer.samplers import uniform_grid
    from tests.conftest import photo_arrays

    lr = photo_arrays()["coffee"][100:148, 200:260]
    settings = SampleSettings(steps=4, sampler="euler", seed=3, temperature=1.0)
    expected = Upscaler(OrtBackend(tiny_onnx, tiny_info), tiny_info).upscale(
        lr.astype(np.float32) / 255, settings
    )
    expected_u8 = np.floor(np.clip(expected.image, 0, 1) * 255 + 0.5).astype(np.uint8)
    for tile in (256, 96):
        loop = create_gpu_loop(gpu_backend, tile=tile, max_batch=2)
        image, calls, tiles = loop.upscale(lr, uniform_grid(4), "euler", seed=3, temperature=1.0)
        assert calls == 4
        assert image.shape == expected_u8.shape
        difference = np.abs(image.astype(int) - expected_u8.astype(int))
        assert difference.max() <= (2 if tiles == 1 else 8), (tile, tiles)
