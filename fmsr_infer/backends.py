"""Choose the network backend that runs the exported model.

Backends, fastest first:

- "tensorrt": the fp16 TensorRT engine beside the model (`<stem>_fp16.engine`, built by
  `fmsr-export --fp16` on the GPU that runs it). Needs the `tensorrt` package,
  cuda-python and a CUDA GPU; the engine's JSON must match the installed TensorRT, the
  GPU and the model (see `fmsr_infer.backend_trt`).
- "onnxruntime-cuda": ONNX Runtime's CUDA execution provider (the `onnxruntime-gpu`
  package) on the fp16 ONNX beside the model when it matches, else on the model.
- "cpu": ONNX Runtime's CPU execution provider on the model.

"auto" takes the first that loads and logs its choice once, with the reason each
faster one was skipped. Naming a backend that cannot load raises BackendUnavailable,
whose message names what is missing.

Two ways to run a backend:

1. `backend(x_t, cond, t) -> np.ndarray`: every backend is a callable on host arrays,
   x_t and cond [N, 3, H, W] and t [N] float32, returning the network output
   [N, 3, H, W] float32. This is what `fmsr_infer.pipeline` calls for each step. The
   GPU backends copy in and out on every call; the TensorRT one also limits N, H and
   W to its engine's profile, given by `backend.max_shape` (batch, height, width).
2. `create_gpu_loop(backend)`: for a GPU backend, a `fmsr_infer.gpu_loop.GpuLoop`
   that runs the whole sampler of an image on the device, with one copy in and one
   out:

       loop = create_gpu_loop(backend)  # None for the CPU backend
       if loop is not None and settings.sampler in GPU_SAMPLERS:
           image_uint8, calls_per_tile, tiles = loop.upscale(
               lr, time_grid, settings.sampler, settings.seed, settings.temperature
           )

   `lr` is [h, w, 3] uint8, uint16 or float32 in [0, 1]; `time_grid` comes from
   `fmsr_infer.samplers.make_grid`. The loop supports the samplers in `GPU_SAMPLERS`
   only and raises ValueError for the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fmsr_infer.gpu_loop import GPU_SAMPLERS
from fmsr_infer.model_info import ModelError, ModelInfo

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime-cuda", "cpu")
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "cpu")

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "GPU_SAMPLERS",
    "BackendUnavailable",
    "create_backend",
    "create_gpu_loop",
]


class BackendUnavailable(ModelError):
    """A backend cannot run here (a package, the GPU or the engine is missing or stale)."""


def _create(name: str, model_path: Path, info: ModelInfo, threads: int):
    if name == "tensorrt":
        from fmsr_infer.backend_trt import TrtBackend

        return TrtBackend(model_path, info)
    if name == "onnxruntime-cuda":
        from fmsr_infer.backend_ort_cuda import OrtCudaBackend

        return OrtCudaBackend(model_path, info, threads=threads)
    from fmsr_infer.backend_ort import OrtBackend

    if model_path.suffix == ".engine":
        model_path = model_path.with_suffix(".onnx")
    return OrtBackend(model_path, info, threads=threads)


def create_backend(name: str, model_path: str | Path, info: ModelInfo, threads: int = 0):
    """Create the backend `name` for a model; "auto" picks the fastest that loads.

    Raises ValueError for an unknown name, BackendUnavailable when the named backend
    cannot run here, and ModelError when the model itself cannot be loaded.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    model_path = Path(model_path)
    if name != "auto":
        backend = _create(name, model_path, info, threads)
        log.info("backend: %s", _describe(backend))
        return backend

    skipped = []
    for candidate in AUTO_ORDER[:-1]:
        try:
            backend = _create(candidate, model_path, info, threads)
        except BackendUnavailable as exc:
            if getattr(exc, "stale", False):
                # A stale engine needs a rebuild, unlike a missing package, so it is a warning.
                log.warning("not using %s: %s", candidate, exc)
            skipped.append(f"{candidate}: {exc}")
            continue
        log.info("backend: %s (auto)", _describe(backend))
        return backend
    backend = _create(AUTO_ORDER[-1], model_path, info, threads)
    log.info("backend: %s (auto; skipped %s)", _describe(backend), " | ".join(skipped))
    return backend


def _describe(backend) -> str:
    detail = getattr(backend, "description", None)
    return f"{backend.name}, {detail}" if detail else backend.name


def create_gpu_loop(backend, **options):
    """Return a GpuLoop that runs the whole sampler on the GPU, or None for a CPU backend.

    `options` go to `GpuLoop` (tile, max_batch, overlap, use_cuda_graphs).
    """
    factory = getattr(backend, "create_gpu_loop", None)
    if factory is None:
        return None
    return factory(**options)
