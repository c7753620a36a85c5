"""ONNX Runtime CUDA backend: the CUDA execution provider with IO binding.

Needs the `onnxruntime-gpu` package, which installs the same `onnxruntime` module as the
CPU package. With both installed, whichever was installed last wins, and the CUDA
provider may be missing. When CUDA cannot start (no GPU, or CUDA or cuDNN libraries
missing), ONNX Runtime logs an error and runs the session on the CPU without raising,
so this backend checks `session.get_providers()` and refuses to run on the CPU.

It runs the fp16 ONNX beside the model (`<stem>_fp16.onnx`, from `fmsr-export --fp16`)
when that file's metadata names the model as its source, and the model itself otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from fmsr_infer.backends import BackendUnavailable
from fmsr_infer.model_info import INPUT_NAMES, ModelError, ModelInfo, metadata_path

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def fp16_sibling(model_path: Path, info: ModelInfo) -> Path | None:
    """Return the fp16 ONNX made from this model, or None when there is none that matches."""
    if model_path.stem.endswith("_fp16"):
        return None
    candidate = model_path.with_name(model_path.stem + "_fp16.onnx")
    meta_path = metadata_path(candidate)
    if not candidate.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        log.warning("ignoring %s: its metadata %s is unreadable (%s)", candidate, meta_path, exc)
        return None
    if meta.get("source_onnx_sha256") != info.onnx_sha256:
        log.warning(
            "ignoring %s: it was made from another model (source sha256 %s, model %s); "
            "re-export with fmsr-export --fp16",
            candidate,
            str(meta.get("source_onnx_sha256"))[:12],
            info.onnx_sha256[:12],
        )
        return None
    return candidate


def create_cuda_session(
    model_path: Path, threads: int = 0, device: int = 0, stream: int | None = None
):
    """Create an InferenceSession on the CUDA provider, or raise BackendUnavailable.

    With `stream`, ONNX Runtime enqueues its kernels on that CUDA stream
    (`user_compute_stream`), so they are ordered with the caller's kernels.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(
            f"onnxruntime is not installed ({exc}); pip install onnxruntime-gpu"
        ) from exc
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise BackendUnavailable(
            f"this onnxruntime has no CUDA provider (it has {available}): the CPU package "
            "is installed, or both packages are; pip uninstall -y onnxruntime "
            "onnxruntime-gpu, then pip install onnxruntime-gpu"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    provider_options = {"device_id": str(device)}
    if stream is not None:
        provider_options["user_compute_stream"] = str(stream)
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=[(CUDA_PROVIDER, provider_options)]
        )
    except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/EPFail types
        raise BackendUnavailable(
            f"ONNX Runtime could not create a CUDA session for {model_path}: {exc}"
        ) from exc
    providers = session.get_providers()
    if CUDA_PROVIDER not in providers:
        raise BackendUnavailable(
            f"ONNX Runtime could not start CUDA and fell back to {providers} (see its log "
            "above: no GPU, or a CUDA or cuDNN library that onnxruntime-gpu needs is missing)"
        )
    inputs = [i.name for i in session.get_inputs()]
    if inputs != list(INPUT_NAMES):
        raise ModelError(
            f"ONNX model {model_path} has inputs {inputs}, expected {list(INPUT_NAMES)}"
        )
    return session


def _io_dtypes(session) -> tuple[str, str]:
    """Return (cond dtype, output dtype), checking that x_t and t are float32."""
    types = {i.name: _ORT_DTYPES.get(i.type) for i in session.get_inputs()}
    output = session.get_outputs()[0]
    output_dtype = _ORT_DTYPES.get(output.type)
    if (
        types["x_t"] != "float32"
        or types["t"] != "float32"
        or types["cond"] is None
        or output_dtype is None
    ):
        raise ModelError(
            f"ONNX model has I/O types {types} and output {output.type}; x_t and t must be "
            "float32 and cond and the output float32 or float16"
        )
    return types["cond"], output_dtype


class OrtCudaRunner:
    """Network calls on device buffers through IO binding, for `GpuLoop`.

    ONNX Runtime runs on the loop's stream. Its calls are not captured into CUDA
    graphs, because a session run also does host work that a graph cannot replay.
    """

    name = "onnxruntime-cuda"
    capturable = False
    max_shape = None

    def __init__(self, model_path: Path, stream: int, threads: int = 0, device: int = 0):
        self.session = create_cuda_session(
            model_path, threads=threads, device=device, stream=stream
        )
        self.device = device
        self.output_name = self.session.get_outputs()[0].name
        self.cond_dtype, self.output_dtype = _io_dtypes(self.session)

    def prepare(self, batch: int, height: int, width: int):
        return (batch, height, width)

    def enqueue(
        self, shape, x_ptr: int, cond_ptr: int, t_ptr: int, out_ptr: int, stream: int
    ) -> None:
        batch, height, width = shape
        image = [batch, 3, height, width]
        binding = self.session.io_binding()
        binding.bind_input("x_t", "cuda", self.device, np.float32, image, x_ptr)
        binding.bind_input("cond", "cuda", self.device, np.dtype(self.cond_dtype), image, cond_ptr)
        binding.bind_input("t", "cuda", self.device, np.float32, [batch], t_ptr)
        binding.bind_output(
            self.output_name, "cuda", self.device, np.dtype(self.output_dtype), image, out_ptr
        )
        self.session.run_with_iobinding(binding)


class OrtCudaBackend:
    """The model on ONNX Runtime's CUDA provider as `backend(x_t, cond, t) -> np.ndarray`."""

    name = "onnxruntime-cuda"
    max_shape = None

    def __init__(self, model_path: str | Path, info: ModelInfo, threads: int = 0, device: int = 0):
        model_path = Path(model_path)
        if model_path.suffix == ".engine":
            model_path = model_path.with_suffix(".onnx")
        self.model_path = fp16_sibling(model_path, info) or model_path
        self.info = info
        self.threads = threads
        self.device = device
        self.session = create_cuda_session(self.model_path, threads=threads, device=device)
        self.output_name = self.session.get_outputs()[0].name
        self.cond_dtype, self.output_dtype = _io_dtypes(self.session)
        self.description = f"{self.model_path.name} on CUDA device {device}"

    def __call__(self, x_t: np.ndarray, cond: np.ndarray, t: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        binding.bind_cpu_input("x_t", np.ascontiguousarray(x_t, dtype=np.float32))
        binding.bind_cpu_input("cond", np.ascontiguousarray(cond, dtype=np.dtype(self.cond_dtype)))
        binding.bind_cpu_input("t", np.ascontiguousarray(t, dtype=np.float32))
        binding.bind_output(self.output_name, "cuda", self.device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)

    def create_gpu_loop(self, **options):
        """Return a GpuLoop on a session that runs on the loop's own stream."""
        from fmsr_infer.gpu_loop import GpuLoop, Stream

        stream = Stream()
        runner = OrtCudaRunner(
            self.model_path, stream.handle, threads=self.threads, device=self.device
        )
        return GpuLoop(runner, self.info, stream=stream, **options)
