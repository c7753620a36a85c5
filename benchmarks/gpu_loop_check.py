"""Check the GPU loop on a CUDA machine without TensorRT, and print what it found.

Usage:
    python benchmarks/gpu_loop_check.py [--model MODEL.onnx] [--ckpt CKPT.pt] [--output FILE]

The loop (`fmsr_infer.gpu_loop.GpuLoop`) runs the whole sampler on the device: the
cpp_ext CUDA kernels for conditioning, noise, updates, blend and output, a network
runner, and CUDA graph capture. This script runs it with three networks that need no
TensorRT, each against the numpy pipeline (`fmsr_infer.pipeline.Upscaler`) on the CPU:

1. "copy": the network output is its conditioning input (a device-to-device copy, so
   x1_hat = cond), which makes the ODE exact and isolates the kernels and the loop.
   Runs every sampler of `GPU_SAMPLERS` with CUDA graphs off and on (captured on the
   2nd batch, replayed on the 3rd), and with a runner that fails during capture, which
   must log the fallback and still give the same image.
2. "torch": UNetSR from `--ckpt` (or randomly initialized) on the loop's stream through
   `torch.cuda.ExternalStream`, with the two-call samplers heun and midpoint, graphs
   off and on. Capturing torch ops outside `torch.cuda.graph` may fail, and then the
   loop must fall back and log a warning.
3. "onnxruntime-cuda": `--model` on ONNX Runtime's CUDA provider with IO binding
   (needs onnxruntime-gpu), against ONNX Runtime on the CPU.

Each check prints its max pixel difference (uint8 levels) against the CPU pipeline,
the time per image, and whether the graph was captured. The JSON report goes to
`--output` (default benchmarks/results/gpu_loop_check-<host>-<date>.json).

Exit status: 0 when every check that ran passed, 1 when one failed, 2 when the machine
has no CUDA device, no cuda-python or no fmsr_infer._ext_cuda.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmsr_infer import gpu_loop
from fmsr_infer.gpu_loop import GpuLoop, GpuUnavailable, Stream, cuda_call, import_cudart
from fmsr_infer.model_info import INPUT_NAMES, METADATA_FORMAT, ModelInfo
from fmsr_infer.pipeline import SampleSettings, Upscaler
from fmsr_infer.samplers import uniform_grid
from fmsr_infer.tiling import TileSettings

log = logging.getLogger("gpu_loop_check")

# LR 48x64 gives a 192x256 output: one 256 tile, or several 96-pixel tiles (2 per batch,
# so that the 96-pixel shape has 3+ batches: plain run, capture, replay).
LR_SHAPE = (48, 64)
TILES = (256, 96)
BATCH = 2
STEPS = 4
# Max uint8 difference from the CPU pipeline. The copy network is exact up to float32
# rounding, and real networks differ by their GPU convolution arithmetic (TF32, cuDNN).
COPY_TOLERANCE = 1
NETWORK_TOLERANCE = 4


def fail_fast(message: str) -> None:
    print(f"gpu_loop_check: {message}", file=sys.stderr)
    sys.exit(2)


def synthetic_info(prediction: str = "x1", target: str = "residual") -> ModelInfo:
    """ModelInfo of a network that has no export (the copy network, a fresh UNetSR)."""
    return ModelInfo(
        format=METADATA_FORMAT,
        scale=4,
        size_multiple=4,
        value_range=[-1.0, 1.0],
        input_names=list(INPUT_NAMES),
        output_name="x1" if prediction == "x1" else "velocity",
        target=target,
        prediction=prediction,
        residual_scale=4.0,
        t_floor=0.05,
        sampler_default="euler",
        steps_default=STEPS,
        temperature_default=1.0,
        precision="fp32",
        training_step=0,
        checkpoint_sha256="",
        onnx_sha256="",
        parity_max_abs_error=0.0,
    )


def test_image() -> np.ndarray:
    """A real photo crop (scikit-image), else a smooth pattern; uint8 [48, 64, 3]."""
    h, w = LR_SHAPE
    try:
        from skimage import data

        return np.ascontiguousarray(data.coffee()[100 : 100 + h, 200 : 200 + w])
    except ImportError:
        y, x = np.mgrid[0:h, 0:w]
        pattern = np.stack([np.sin(x / 5.0), np.cos(y / 7.0), np.sin((x + y) / 9.0)], axis=-1)
        return ((pattern * 0.5 + 0.5) * 255).astype(np.uint8)


def cpu_reference(
    backend, info: ModelInfo, lr: np.ndarray, sampler: str, tile: int, overlap: int
) -> np.ndarray:
    """Run the numpy pipeline with the GPU loop's tiling; return the uint8 image."""
    settings = SampleSettings(steps=STEPS, sampler=sampler, seed=7, temperature=1.0)
    tiling = TileSettings(tile=tile, overlap=overlap, batch=BATCH)
    result = Upscaler(backend, info).upscale(lr.astype(np.float32) / 255.0, settings, tiling)
    return np.floor(np.clip(result.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------
# Network runners for the check


class CopyRunner:
    """A capturable "network" whose output is its cond input: x1_hat = cond."""

    name = "copy"
    capturable = True
    cond_dtype = "float32"
    output_dtype = "float32"
    max_shape = None

    def prepare(self, batch: int, height: int, width: int):
        return batch * 3 * height * width * 4

    def enqueue(self, nbytes, x_ptr, cond_ptr, t_ptr, out_ptr, stream) -> None:
        cudart = import_cudart()
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        cuda_call(
            cudart.cudaMemcpyAsync(out_ptr, cond_ptr, nbytes, kind, stream), "cudaMemcpyAsync D2D"
        )


class CaptureFailingRunner(CopyRunner):
    """The copy network, raising whenever its stream is being captured."""

    name = "copy, failing under capture"

    def enqueue(self, nbytes, x_ptr, cond_ptr, t_ptr, out_ptr, stream) -> None:
        cudart = import_cudart()
        status = cuda_call(cudart.cudaStreamIsCapturing(stream), "cudaStreamIsCapturing")
        if status != cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone:
            raise RuntimeError("this runner rejects stream capture (a test of the fallback)")
        super().enqueue(nbytes, x_ptr, cond_ptr, t_ptr, out_ptr, stream)


def copy_backend(x_t, cond, t):
    return np.array(cond, dtype=np.float32, copy=True)


class _CudaArray:
    """A raw device pointer as __cuda_array_interface__, for a zero-copy torch view."""

    def __init__(self, ptr: int, shape: tuple[int, ...]):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": "<f4",
            "data": (ptr, False),
            "version": 3,
        }


class TorchRunner:
    """UNetSR in torch on the loop's stream, reading and writing the loop's buffers."""

    name = "torch"
    capturable = True
    cond_dtype = "float32"
    output_dtype = "float32"
    max_shape = None

    def __init__(self, torch, model, stream_handle: int):
        self.torch = torch
        self.model = model
        self.stream = torch.cuda.ExternalStream(stream_handle)

    def prepare(self, batch: int, height: int, width: int):
        return (batch, height, width)

    def enqueue(self, shape, x_ptr, cond_ptr, t_ptr, out_ptr, stream) -> None:
        torch = self.torch
        batch, height, width = shape
        image = (batch, 3, height, width)

        def view(ptr, dims):
            return torch.as_tensor(_CudaArray(ptr, dims), device="cuda")

        with torch.no_grad(), torch.cuda.stream(self.stream):
            view(out_ptr, image).copy_(
                self.model(view(x_ptr, image), view(cond_ptr, image), view(t_ptr, (batch,)))
            )


class TorchBackend:
    """The same torch model as a numpy callable, for the CPU pipeline's reference run."""

    def __init__(self, torch, model):
        self.torch = torch
        self.model = model

    def __call__(self, x_t, cond, t):
        torch = self.torch
        with torch.no_grad():
            out = self.model(
                *(torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in (x_t, cond, t))
            )
        return out.float().cpu().numpy()


# ---------------------------------------------------------------------------------
# Checks


def run_loop(runner, info, lr, sampler, tile, use_graphs, repeats: int = 2):
    """Run GpuLoop twice on the image; return (image, seconds per image, loop)."""
    loop = GpuLoop(
        runner,
        info,
        stream=getattr(runner, "loop_stream", None),
        tile=tile,
        max_batch=BATCH,
        use_cuda_graphs=use_graphs,
    )
    image = None
    start = time.perf_counter()
    for _ in range(repeats):
        image, _, _ = loop.upscale(lr, uniform_grid(STEPS), sampler, seed=7, temperature=1.0)
    seconds = (time.perf_counter() - start) / repeats
    return image, seconds, loop


def compare(name, image, expected, tolerance, seconds, loop, results, extra=None):
    difference = int(np.max(np.abs(image.astype(np.int32) - expected.astype(np.int32))))
    captured, failed = loop.graph_counts()
    entry = {
        "check": name,
        "max_difference": difference,
        "tolerance": tolerance,
        "passed": difference <= tolerance,
        "seconds_per_image": round(seconds, 5),
        "graphs_captured": captured,
        "captures_failed": failed,
    }
    entry.update(extra or {})
    results.append(entry)
    print(
        f"{'PASS' if entry['passed'] else 'FAIL'} {name}: max difference {difference} "
        f"(tolerance {tolerance}), {seconds * 1e3:.1f} ms per image, graphs captured "
        f"{captured}, captures failed {failed}"
    )
    return entry


def check_copy(lr, results):
    for prediction, target in (("x1", "residual"), ("velocity", "image")):
        info = synthetic_info(prediction, target)
        for sampler in gpu_loop.GPU_SAMPLERS:
            for tile in TILES:
                loop_overlap = min(32, tile // 2)
                expected = cpu_reference(copy_backend, info, lr, sampler, tile, loop_overlap)
                plain, plain_s, plain_loop = run_loop(CopyRunner(), info, lr, sampler, tile, False)
                graph, graph_s, graph_loop = run_loop(
                    CopyRunner(), info, lr, sampler, tile, True, repeats=3
                )
                label = f"copy {prediction}/{target} {sampler} tile {tile}"
                compare(
                    f"{label} plain", plain, expected, COPY_TOLERANCE, plain_s, plain_loop, results
                )
                entry = compare(
                    f"{label} graph", graph, expected, COPY_TOLERANCE, graph_s, graph_loop, results
                )
                if not np.array_equal(plain, graph):
                    entry["passed"] = False
                    print(f"FAIL {label}: graph replay differs from plain launches")


def check_capture_fallback(lr, results):
    info = synthetic_info()
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("fmsr_infer.gpu_loop").addHandler(handler)
    try:
        expected = cpu_reference(copy_backend, info, lr, "euler", 96, 32)
        image, seconds, loop = run_loop(
            CaptureFailingRunner(), info, lr, "euler", 96, True, repeats=3
        )
    finally:
        logging.getLogger("fmsr_infer.gpu_loop").removeHandler(handler)
    entry = compare(
        "capture failure falls back to plain launches",
        image,
        expected,
        COPY_TOLERANCE,
        seconds,
        loop,
        results,
    )
    warned = any("CUDA graph capture failed" in message for message in records)
    entry["fallback_logged"] = warned
    if not warned or entry["captures_failed"] == 0:
        entry["passed"] = False
        print("FAIL capture fallback: no 'CUDA graph capture failed' warning was logged")


def check_torch(lr, ckpt, results):
    try:
        import torch
    except ImportError:
        print("SKIP torch: torch is not installed")
        return
    if not torch.cuda.is_available():
        print(f"SKIP torch: torch {torch.__version__} has no CUDA device")
        return
    from fmsr_train.model import ModelConfig, UNetSR

    if ckpt:
        from fmsr_export.export import load_ema_model

        model, state = load_ema_model(ckpt)
        fm = state["config"]["fm"]
        info = synthetic_info(fm["prediction"], fm["target"])
        info.residual_scale, info.t_floor = float(fm["residual_scale"]), float(fm["t_floor"])
    else:
        torch.manual_seed(0)
        model = UNetSR(ModelConfig(base_channels=16))
        for parameter in model.parameters():  # the zero output layer would hide errors
            torch.nn.init.normal_(parameter, std=0.05)
        info = synthetic_info()
    model = model.cuda().eval()
    reference_backend = TorchBackend(torch, model)
    for sampler in ("heun", "midpoint"):
        expected = cpu_reference(reference_backend, info, lr, sampler, 96, 32)
        for use_graphs in (False, True):
            stream = Stream()
            runner = TorchRunner(torch, model, stream.handle)
            runner.loop_stream = stream
            image, seconds, loop = run_loop(runner, info, lr, sampler, 96, use_graphs, repeats=3)
            compare(
                f"torch UNetSR {sampler} tile 96 {'graph' if use_graphs else 'plain'}",
                image,
                expected,
                NETWORK_TOLERANCE,
                seconds,
                loop,
                results,
                {"checkpoint": str(ckpt) if ckpt else None},
            )


def check_onnxruntime_cuda(lr, model_path, results):
    if not model_path:
        print("SKIP onnxruntime-cuda: pass --model MODEL.onnx (from fmsr-export)")
        return
    from fmsr_infer.backend_ort import OrtBackend
    from fmsr_infer.backends import BackendUnavailable, create_backend, create_gpu_loop
    from fmsr_infer.model_info import load_info

    info = load_info(model_path)
    try:
        backend = create_backend("onnxruntime-cuda", model_path, info)
    except BackendUnavailable as exc:
        print(f"SKIP onnxruntime-cuda: {exc}")
        return
    cpu = OrtBackend(model_path, info)
    for tile in TILES:
        loop = create_gpu_loop(backend, tile=tile, max_batch=BATCH)
        expected = cpu_reference(cpu, info, lr, "euler", tile, loop.overlap)
        start = time.perf_counter()
        image, _, _ = loop.upscale(lr, uniform_grid(STEPS), "euler", seed=7, temperature=1.0)
        seconds = time.perf_counter() - start
        compare(
            f"onnxruntime-cuda {backend.model_path.name} euler tile {tile}",
            image,
            expected,
            NETWORK_TOLERANCE,
            seconds,
            loop,
            results,
        )


def environment() -> dict:
    cudart = import_cudart()
    facts = gpu_loop.gpu_facts()
    info = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "gpu": facts.name,
        "compute_capability": facts.compute_capability,
        "gpu_memory_gib": round(facts.total_memory_bytes / 2**30, 2),
        "cuda_runtime": cuda_call(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"),
        "cuda_driver": cuda_call(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model for the onnxruntime-cuda check")
    parser.add_argument(
        "--ckpt", type=Path, help="checkpoint for the torch check (default: random weights)"
    )
    parser.add_argument("--output", type=Path, help="JSON report path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        env = environment()
        from fmsr_infer.kernels import load_cuda_kernels

        load_cuda_kernels()
    except (GpuUnavailable, ImportError) as exc:
        fail_fast(str(exc))
    print(json.dumps(env, indent=2))

    lr = test_image()
    results: list[dict] = []
    check_copy(lr, results)
    check_capture_fallback(lr, results)
    check_torch(lr, args.ckpt, results)
    check_onnxruntime_cuda(lr, args.model, results)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    output = (
        args.output
        or REPO / "benchmarks" / "results" / f"gpu_loop_check-{env['host']}-{stamp}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    failed = [r["check"] for r in results if not r["passed"]]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed; report: {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
