"""TensorRT backend: an fp16 engine, its metadata, and the rejection of stale engines.

`fmsr-export --fp16` (fmsr_export/trt_build.py) writes `<stem>_fp16.engine` beside the
model and `<stem>_fp16.engine.json` beside the engine. A serialized engine runs only
with the TensorRT version that built it, and it is tuned for the GPU it was built on.
So before it deserializes anything, the runtime compares the JSON with the installed
TensorRT, the GPU and the model's sha256. It rejects a mismatch with the command that
rebuilds the engine.

Engine I/O: x_t [N, 3, H, W] float32, cond [N, 3, H, W] float32 or float16, t [N]
float32; output [N, 3, H, W] float32 or float16. N, H and W lie in the engine's one
optimization profile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmsr_infer.backends import BackendUnavailable
from fmsr_infer.model_info import INPUT_NAMES, ModelInfo

log = logging.getLogger(__name__)

ENGINE_FORMAT = "fmsr-trt-engine-1"
ENGINE_SUFFIX = ".engine"
FP16_STEM_SUFFIX = "_fp16"
MAX_CACHED_CONTEXTS = 4


def engine_path_for(model_path: str | Path) -> Path:
    """Return the engine of a model: `x.onnx` and `x_fp16.onnx` give `x_fp16.engine`."""
    model_path = Path(model_path)
    if model_path.suffix == ENGINE_SUFFIX:
        return model_path
    stem = model_path.stem
    if not stem.endswith(FP16_STEM_SUFFIX):
        stem += FP16_STEM_SUFFIX
    return model_path.with_name(stem + ENGINE_SUFFIX)


def engine_metadata_path(engine_path: str | Path) -> Path:
    """Return the JSON beside an engine: `x_fp16.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


@dataclass
class EngineMetadata:
    """Build record of an engine (its source model, target and sizes), stored as JSON beside it.

    `profile` maps "min", "opt" and "max" to [batch, height, width] of x_t and cond.
    """

    format: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict[str, list[int]]
    onnx_file: str
    onnx_sha256: str
    source_onnx_sha256: str
    device_memory_bytes: int
    engine_bytes: int
    workspace_bytes: int
    builder_optimization_level: int
    gpu_memory_budget_bytes: int
    reserve_bytes: int
    layer_precisions: dict[str, int] = field(default_factory=dict)
    training_step: int = -1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def max_shape(self) -> tuple[int, int, int]:
        batch, height, width = self.profile["max"]
        return int(batch), int(height), int(width)


def load_engine_metadata(engine_path: str | Path) -> EngineMetadata:
    """Read the JSON beside an engine; raises EngineMismatchError when it is missing or invalid."""
    engine_path = Path(engine_path)
    path = engine_metadata_path(engine_path)
    if not path.is_file():
        raise EngineMismatchError(
            f"engine metadata {path} not found beside {engine_path}; rebuild the engine "
            f"with {rebuild_command(engine_path)}"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineMismatchError(f"engine metadata {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != ENGINE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise EngineMismatchError(
            f"engine metadata {path} has format {found!r}, expected {ENGINE_FORMAT!r}; "
            f"rebuild the engine with {rebuild_command(engine_path)}"
        )
    names = {f.name for f in dataclasses.fields(EngineMetadata)}
    required = {
        f.name for f in dataclasses.fields(EngineMetadata) if f.default is dataclasses.MISSING
    }
    required -= {"layer_precisions"}
    missing = sorted(required - set(raw))
    if missing:
        raise EngineMismatchError(f"engine metadata {path} lacks {missing}; rebuild the engine")
    return EngineMetadata(**{k: v for k, v in raw.items() if k in names})


def rebuild_command(engine_path: str | Path, model_changed: bool = False) -> str:
    """Return the command that rebuilds an engine on this machine.

    When the model changed, the fp16 ONNX must be re-exported from its checkpoint;
    otherwise the fp16 ONNX beside the engine is enough.
    """
    engine_path = Path(engine_path)
    fp16_onnx = engine_path.with_suffix(".onnx")
    fp32_onnx = fp16_onnx.with_name(fp16_onnx.stem.removesuffix(FP16_STEM_SUFFIX) + ".onnx")
    export = f"fmsr-export --ckpt CHECKPOINT --out {fp32_onnx} --fp16"
    if model_changed:
        return export
    return f"python -m fmsr_export.trt_build {fp16_onnx} (or {export})"


class EngineMismatchError(BackendUnavailable):
    """The engine was built for another TensorRT version, GPU or model."""

    stale = True


def check_engine_metadata(
    meta: EngineMetadata,
    engine_path: str | Path,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    model_sha256: str,
) -> None:
    """Raise EngineMismatchError unless the engine matches this TensorRT, GPU and model.

    The model matches when its sha256 is the engine's fp16 ONNX or that ONNX's fp32 source.
    """
    problems = []
    if meta.tensorrt_version != tensorrt_version:
        problems.append(
            f"TensorRT {meta.tensorrt_version}, but TensorRT {tensorrt_version} is installed"
        )
    if meta.gpu_name != gpu_name or meta.compute_capability != compute_capability:
        problems.append(
            f"the GPU {meta.gpu_name} (compute capability {meta.compute_capability}), but this "
            f"GPU is {gpu_name} (compute capability {compute_capability})"
        )
    model_changed = model_sha256 not in (meta.onnx_sha256, meta.source_onnx_sha256)
    if model_changed:
        problems.append(
            f"the ONNX model with sha256 {meta.source_onnx_sha256[:12]}… (fp16: "
            f"{meta.onnx_sha256[:12]}…), but the model given has sha256 {model_sha256[:12]}…"
        )
    if meta.precision != "fp16":
        problems.append(f"precision {meta.precision!r}, but fmsr runs fp16 engines only")
    if problems:
        raise EngineMismatchError(
            f"TensorRT engine {engine_path} was built for "
            + "; and for ".join(problems)
            + f". Rebuild it on this machine: {rebuild_command(engine_path, model_changed)}"
        )


def import_tensorrt():
    """Return the tensorrt module, or raise BackendUnavailable saying what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"TensorRT is not installed ({exc}); pip install 'fmsr[gpu]' (tensorrt-cu13, "
            "which needs an NVIDIA driver R580 or newer), or tensorrt-cu12 for older drivers"
        ) from exc
    return tensorrt


# ---------------------------------------------------------------------------------
# Runtime


_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16"}


class TrtRunner:
    """An engine's calls on device buffers, for `fmsr_infer.gpu_loop.GpuLoop`.

    Each shape gets its own execution context, because a CUDA graph freezes the
    context's shapes. The contexts share one activation buffer, sized for the
    profile's max (USER_MANAGED allocation), since the loop runs one at a time.
    """

    name = "tensorrt"
    capturable = True

    def __init__(self, engine_path: Path, meta: EngineMetadata):
        from fmsr_infer.gpu_loop import DeviceBuffer

        trt = import_tensorrt()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"TensorRT could not deserialize {engine_path} (see its log above); rebuild it "
                f"with {rebuild_command(engine_path)}"
            )
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(INPUT_NAMES) or len(outputs) != 1:
            raise EngineMismatchError(
                f"engine {engine_path} has inputs {inputs} and outputs {outputs}; expected "
                f"inputs {list(INPUT_NAMES)} and one output"
            )
        self.output_name = outputs[0]
        dtypes = {n: _TRT_DTYPES.get(engine.get_tensor_dtype(n).name) for n in names}
        if dtypes["x_t"] != "float32" or dtypes["t"] != "float32" or None in dtypes.values():
            raise EngineMismatchError(
                f"engine {engine_path} has I/O dtypes {dtypes}; x_t and t must be float32 "
                "and cond and the output float32 or float16 (export with keep_io_types)"
            )
        self.cond_dtype = dtypes["cond"]
        self.output_dtype = dtypes[self.output_name]
        min_shape, _, max_shape = engine.get_tensor_profile_shape("x_t", 0)
        self.min_shape = (int(min_shape[0]), int(min_shape[2]), int(min_shape[3]))
        self.max_shape = (int(max_shape[0]), int(max_shape[2]), int(max_shape[3]))
        if self.max_shape != meta.max_shape:
            log.warning(
                "engine %s has the profile max %s but its JSON records %s",
                engine_path,
                self.max_shape,
                meta.max_shape,
            )
        size = int(engine.get_device_memory_size_for_profile_v2(0))
        self.activations = DeviceBuffer(size, "TensorRT activations")

    def check_shape(self, batch: int, height: int, width: int) -> None:
        low, high = self.min_shape, self.max_shape
        shape = (batch, height, width)
        if not all(lo <= v <= hi for lo, v, hi in zip(low, shape, high)):
            raise ValueError(
                f"network input of batch {batch} and {height}x{width} is outside the engine's "
                f"profile (batch {low[0]}..{high[0]}, height {low[1]}..{high[1]}, width "
                f"{low[2]}..{high[2]}); use tiles of at most {high[1]}x{high[2]}"
            )

    def prepare(self, batch: int, height: int, width: int):
        """Return an execution context with this input shape set."""
        trt = self.trt
        self.check_shape(batch, height, width)
        context = self.engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED
        )
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of memory?)")
        context.set_device_memory(self.activations.ptr, self.activations.nbytes)
        for name, shape in (
            ("x_t", (batch, 3, height, width)),
            ("cond", (batch, 3, height, width)),
            ("t", (batch,)),
        ):
            if not context.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT rejected the input shape {shape} of {name}")
        return context

    def enqueue(
        self, context, x_ptr: int, cond_ptr: int, t_ptr: int, out_ptr: int, stream: int
    ) -> None:
        for name, ptr in (
            ("x_t", x_ptr),
            ("cond", cond_ptr),
            ("t", t_ptr),
            (self.output_name, out_ptr),
        ):
            if not context.set_tensor_address(name, ptr):
                raise RuntimeError(f"TensorRT rejected the address of {name}")
        if not context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")


class TrtBackend:
    """The TensorRT engine of a model as `backend(x_t, cond, t) -> np.ndarray`.

    Copies the inputs in and the output out on every call; `create_gpu_loop` runs the
    whole sampler on the device instead.
    """

    name = "tensorrt"

    def __init__(self, model_path: str | Path, info: ModelInfo, device: int = 0):
        from fmsr_infer.gpu_loop import CudaError, GpuUnavailable, Stream, gpu_facts

        trt = import_tensorrt()
        try:
            gpu = gpu_facts(device)
        except GpuUnavailable as exc:
            raise BackendUnavailable(str(exc)) from exc
        self.engine_path = engine_path_for(model_path)
        if not self.engine_path.is_file():
            raise BackendUnavailable(
                f"no TensorRT engine {self.engine_path} beside the model; build it on this "
                f"machine with {rebuild_command(self.engine_path)}"
            )
        meta = load_engine_metadata(self.engine_path)
        check_engine_metadata(
            meta,
            self.engine_path,
            trt.__version__,
            gpu.name,
            gpu.compute_capability,
            info.onnx_sha256,
        )
        self.meta = meta
        self.info = info
        try:
            self.runner = TrtRunner(self.engine_path, meta)
            self.stream = Stream()
        except CudaError as exc:
            raise BackendUnavailable(f"TensorRT setup failed on {gpu.name}: {exc}") from exc
        self.max_shape = self.runner.max_shape
        self.description = f"{self.engine_path.name} on {gpu.name}, profile max {self.max_shape}"
        self._contexts: OrderedDict[tuple, object] = OrderedDict()
        self._buffers: dict[str, object] = {}
        self._staging = None

    def _buffer(self, name: str, nbytes: int):
        from fmsr_infer.gpu_loop import DeviceBuffer

        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = DeviceBuffer(nbytes, name)
            self._buffers[name] = buffer
        return buffer

    def _context(self, batch: int, height: int, width: int):
        key = (batch, height, width)
        context = self._contexts.get(key)
        if context is None:
            while len(self._contexts) >= MAX_CACHED_CONTEXTS:
                self._contexts.popitem(last=False)
            context = self.runner.prepare(batch, height, width)
            self._contexts[key] = context
        self._contexts.move_to_end(key)
        return context

    def __call__(self, x_t: np.ndarray, cond: np.ndarray, t: np.ndarray) -> np.ndarray:
        from fmsr_infer.gpu_loop import PinnedBuffer

        batch, channels, height, width = x_t.shape
        if channels != 3 or cond.shape != x_t.shape or t.shape != (batch,):
            raise ValueError(
                f"expected x_t and cond [N, 3, H, W] and t [N], got {x_t.shape}, "
                f"{cond.shape} and {t.shape}"
            )
        self.runner.check_shape(batch, height, width)
        arrays = {
            "x_t": np.ascontiguousarray(x_t, dtype=np.float32),
            "cond": np.ascontiguousarray(cond, dtype=np.dtype(self.runner.cond_dtype)),
            "t": np.ascontiguousarray(t, dtype=np.float32),
        }
        out_dtype = np.dtype(self.runner.output_dtype)
        out_bytes = x_t.size * out_dtype.itemsize
        staging_bytes = max(sum(a.nbytes for a in arrays.values()), out_bytes)
        if self._staging is None or self._staging.nbytes < staging_bytes:
            self._staging = PinnedBuffer(staging_bytes)

        # Inputs in one staging buffer, then one copy each (they are async on the stream).
        from fmsr_infer.gpu_loop import cuda_call, import_cudart

        cudart = import_cudart()
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        pointers = {}
        offset = 0
        for name, array in arrays.items():
            device = self._buffer(name, array.nbytes)
            self._staging.bytes[offset : offset + array.nbytes] = array.view(np.uint8).ravel()
            cuda_call(
                cudart.cudaMemcpyAsync(
                    device.ptr, self._staging.ptr + offset, array.nbytes, kind, self.stream.stream
                ),
                f"cudaMemcpyAsync of {name}",
            )
            pointers[name] = device.ptr
            offset += array.nbytes
        out = self._buffer("output", out_bytes)
        context = self._context(batch, height, width)
        self.runner.enqueue(
            context, pointers["x_t"], pointers["cond"], pointers["t"], out.ptr, self.stream.handle
        )
        # copy_to_host waits for the stream, so the staging buffer is free to reuse after it.
        result = self.stream.copy_to_host(out.ptr, x_t.shape, out_dtype, self._staging)
        return result.astype(np.float32, copy=False)

    def create_gpu_loop(self, **options):
        """Return a GpuLoop that runs the whole sampler on this engine (CUDA graphs on)."""
        from fmsr_infer.gpu_loop import GpuLoop

        return GpuLoop(self.runner, self.info, stream=self.stream, **options)
