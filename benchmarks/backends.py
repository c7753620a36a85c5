"""The backends that fmsr-bench compares, behind one interface.

Every backend runs the same network on the same inputs two ways:
- `network(inputs)`: one network call on inputs made by `make_inputs` from float32
  numpy arrays x_t [1, 3, H, W], cond [1, 3, H, W] and t [1];
- `upscale(lr_u8, run, timer)`: end to end, from an [h, w, 3] uint8 image in memory to
  the [4h, 4w, 3] uint8 output (conditioning, noise, the sampler's steps, rounding),
  with the time of each network call added to `timer`.

The torch backends run the eager reference loop below; the runtime backends run
`fmsr_infer.pipeline.Upscaler`, exactly what fmsr-infer runs.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch

from benchmarks.measure import CallTimer
from benchmarks.models import BenchModel
from benchmarks.runtime import RunSettings, runtime_upscale
from fmsr_infer import flow
from fmsr_infer.noise import gaussian_noise
from fmsr_infer.samplers import get_sampler, uniform_grid

log = logging.getLogger(__name__)

BASELINE = "eager-fp32"
RUNTIME_CPU = "fmsr-ort-cpu"


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here or with this model; the message gives the reason."""


def to_uint8(image01: torch.Tensor) -> torch.Tensor:
    """Round an image in [0, 1] to 8 bits as fmsr-infer does: floor(255 x + 0.5), clamped."""
    return torch.floor(image01.clamp(0, 1) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


class Backend:
    """Base class; subclasses set `name`, `device` and `description` and implement the rest."""

    name = ""
    device = "cpu"
    description = ""

    def setup(self) -> None:
        """Load the model; raise BackendUnavailable with the reason when it cannot run."""

    def prepare(self, height: int, width: int) -> dict[str, Any]:
        """Do the one-time work for an input size (compilation, graph capture).

        Returns notes for the report, such as the seconds it took.
        """
        return {}

    def make_inputs(self, x_t: np.ndarray, cond: np.ndarray, t: np.ndarray) -> Any:
        raise NotImplementedError

    def network(self, inputs: Any) -> Any:
        raise NotImplementedError

    def output_numpy(self, output: Any) -> np.ndarray:
        raise NotImplementedError

    def upscale(self, lr_u8: np.ndarray, run: RunSettings, timer: CallTimer):
        """Return (the uint8 output image, the number of network calls)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for queued device work; a no-op on the CPU."""

    def details(self) -> dict[str, Any]:
        return {}


class TorchBackend(Backend):
    """The network in PyTorch, eager or compiled, on the CPU or a CUDA device."""

    def __init__(
        self,
        name: str,
        model: BenchModel,
        description: str,
        device: str = "cpu",
        channels_last: bool = False,
        compile_network: bool = False,
        autocast_fp16: bool = False,
        cuda_graph: bool = False,
    ):
        self.name = name
        self.bench_model = model
        self.description = description
        self.device = device
        self.channels_last = channels_last
        self.compile_network = compile_network
        self.autocast_fp16 = autocast_fp16
        self.cuda_graph = cuda_graph
        self.model: torch.nn.Module | None = None
        self.compiled = None
        self.graphs: dict[tuple[int, int], Any] = {}
        self.compile_seconds: dict[str, float] = {}

    def setup(self) -> None:
        if self.bench_model.torch_model is None:
            raise BackendUnavailable(self.bench_model.torch_missing_reason)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__})"
            )
        model = self.bench_model.torch_model
        if self.device != "cpu" or self.channels_last or self.compile_network:
            # A separate copy, so that the eager fp32 CPU baseline keeps its layout.
            model = copy.deepcopy(model)
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if self.compile_network:
            import torch._inductor.config as inductor_config

            # Freezing folds the weights into the graph as constants, which lets
            # Inductor pre-pack them for oneDNN; it is PyTorch's advice for CPU inference.
            inductor_config.freezing = True
            self.compiled = torch.compile(model, dynamic=False)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
            cond = cond.contiguous(memory_format=torch.channels_last)
        net = self.compiled if self.compiled is not None else self.model
        if self.autocast_fp16:
            with torch.autocast("cuda", dtype=torch.float16):
                return net(x_t, cond, t).float()
        return net(x_t, cond, t).float()

    def _graph_call(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor):
        graph, static_x, static_cond, static_t, static_out = self.graphs[tuple(x_t.shape[-2:])]
        static_x.copy_(x_t)
        static_cond.copy_(cond)
        static_t.copy_(t)
        graph.replay()
        # The replay overwrites static_out, and Heun keeps the first velocity while it
        # makes the second call, so each caller gets its own copy.
        return static_out.clone()

    def call_network(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor):
        if self.cuda_graph:
            return self._graph_call(x_t, cond, t)
        return self._forward(x_t, cond, t)

    def prepare(self, height: int, width: int) -> dict[str, Any]:
        notes: dict[str, Any] = {}
        if self.compile_network:
            inputs = self.make_inputs(*_zero_inputs(height, width))
            start = time.perf_counter()
            with torch.inference_mode():
                self._forward(*inputs)
            notes["compile_s"] = time.perf_counter() - start
            self.compile_seconds[f"{height}x{width}"] = notes["compile_s"]
        if self.cuda_graph and (height, width) not in self.graphs:
            notes["capture_s"] = self._capture(height, width)
        return notes

    def _capture(self, height: int, width: int) -> float:
        start = time.perf_counter()
        static_x, static_cond, static_t = self.make_inputs(*_zero_inputs(height, width))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                self._forward(static_x, static_cond, static_t)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self._forward(static_x, static_cond, static_t)
        self.graphs[(height, width)] = (graph, static_x, static_cond, static_t, static_out)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    def make_inputs(self, x_t, cond, t):
        return tuple(torch.from_numpy(a).to(self.device) for a in (x_t, cond, t))

    def network(self, inputs):
        with torch.inference_mode():
            return self.call_network(*inputs)

    def output_numpy(self, output) -> np.ndarray:
        return output.float().cpu().numpy()

    def upscale(self, lr_u8: np.ndarray, run: RunSettings, timer: CallTimer):
        if run.tile:
            raise ValueError("the eager reference loop does not tile")
        with torch.inference_mode():
            return self._upscale(lr_u8, run, timer)

    def _upscale(self, lr_u8: np.ndarray, run: RunSettings, timer: CallTimer):
        """Run `fmsr_train.evaluate.super_resolve`, the eager reference, with the runtime noise.

        super_resolve draws its noise with torch.randn. This loop draws the runtime's
        counter-based field for the same seed instead (fmsr_infer.noise, numpy), so that
        its output can be compared with the runtime's at any temperature.
        """
        from fmsr_train.resize_torch import upsample

        info = self.bench_model.info
        scale = info.scale

        # Conditioning: the bicubic upsample in network units.
        lr = torch.from_numpy(lr_u8).to(self.device).float().div(255.0).permute(2, 0, 1)[None]
        cond = flow.to_network(upsample(lr, scale))
        height, width = cond.shape[-2:]

        # Noise: the same field as the runtime's, drawn on the CPU.
        noise = torch.from_numpy(gaussian_noise(run.seed, 3, height, width))[None]
        x = run.temperature * noise.to(self.device)

        def velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
            t_batch = torch.full((x_t.shape[0],), t, device=self.device)
            with timer:
                out = self.call_network(x_t, cond, t_batch)
            if info.prediction == "x1":
                return flow.velocity_from_x1(out, x_t, t, info.t_floor)
            return out

        # The sampler's steps, then the output in 8 bits.
        x, calls = get_sampler(run.sampler)(velocity, x, uniform_grid(run.steps))
        image = flow.image_from_data(x, cond, info.target, info.residual_scale)
        out = to_uint8(flow.from_network(image))
        return out[0].permute(1, 2, 0).cpu().numpy(), calls

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        if self.compile_seconds:
            out["compile_s"] = self.compile_seconds
        return out


def _zero_inputs(height: int, width: int):
    return (
        np.zeros((1, 3, height, width), np.float32),
        np.zeros((1, 3, height, width), np.float32),
        np.full((1,), 0.5, np.float32),
    )


class TimedBackend:
    """Wrap a runtime backend so that each call adds its time to a CallTimer.

    Other attribute reads are forwarded, so the pipeline gets the wrapped backend's own.
    """

    def __init__(self, backend, timer: CallTimer):
        self._backend = backend
        self.timer = timer

    def __call__(self, x_t, cond, t):
        with self.timer:
            return self._backend(x_t, cond, t)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


class RuntimeBackend(Backend):
    """The fmsr runtime: a backend of fmsr_infer.backends inside the pipeline's Upscaler."""

    def __init__(self, name: str, model: BenchModel, runtime_name: str, description: str,
                 threads: int, device: str = "cpu"):
        self.name = name
        self.bench_model = model
        self.runtime_name = runtime_name
        self.description = description
        self.threads = threads
        self.device = device
        self.backend = None
        self.timer = CallTimer()
        self.upscaler = None
        self.gpu_loop = None

    def setup(self) -> None:
        from fmsr_infer import backends as runtime_backends
        from fmsr_infer.pipeline import Upscaler

        if self.runtime_name not in runtime_backends.BACKENDS:
            raise BackendUnavailable(
                f"fmsr_infer.backends has no {self.runtime_name!r} backend "
                f"(BACKENDS = {runtime_backends.BACKENDS})"
            )
        try:
            self.backend = runtime_backends.create_backend(
                self.runtime_name, self.bench_model.onnx_path, self.bench_model.info,
                threads=self.threads,
            )
        except Exception as exc:  # each backend raises its own types (ModelError, ORT, TRT)
            raise BackendUnavailable(
                f"create_backend({self.runtime_name!r}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.upscaler = Upscaler(TimedBackend(self.backend, self.timer), self.bench_model.info)
        create_gpu_loop = getattr(runtime_backends, "create_gpu_loop", None)
        if self.device == "cuda" and create_gpu_loop is not None:
            self.gpu_loop = create_gpu_loop(self.backend)

    def make_inputs(self, x_t, cond, t):
        return x_t, cond, t

    def network(self, inputs):
        return self.backend(*inputs)

    def output_numpy(self, output) -> np.ndarray:
        return np.asarray(output, dtype=np.float32)

    def upscale(self, lr_u8: np.ndarray, run: RunSettings, timer: CallTimer):
        if self.gpu_loop is not None:
            return self._upscale_gpu_loop(lr_u8, run)
        self.upscaler.backend.timer = timer
        return runtime_upscale(self.upscaler, lr_u8, run)

    def _upscale_gpu_loop(self, lr_u8: np.ndarray, run: RunSettings):
        """Run the whole sampler on the GPU, as fmsr-infer does with a GPU backend.

        The loop launches the network itself, so its network time is not measured and
        the row's e2e / network ratio stays empty.
        """
        from fmsr_infer.samplers import uniform_grid

        image, calls_per_tile, tiles = self.gpu_loop.upscale(
            lr_u8, uniform_grid(run.steps), run.sampler, run.seed, run.temperature
        )
        return image, calls_per_tile * tiles

    def details(self) -> dict[str, Any]:
        import onnxruntime as ort

        out: dict[str, Any] = {
            "runtime_backend": self.runtime_name,
            "backend_class": type(self.backend).__name__ if self.backend else None,
            "onnxruntime": ort.__version__,
            "threads_requested": self.threads,
        }
        session = getattr(self.backend, "session", None)
        if session is not None:
            out["providers"] = session.get_providers()
            options = session.get_session_options()
            out["intra_op_num_threads"] = options.intra_op_num_threads
            out["graph_optimization_level"] = str(options.graph_optimization_level)
        return out


class FixedTimeRuntimeBackend(RuntimeBackend):
    """The runtime's Upscaler around the prototype in benchmarks/ort_fixed_t.py.

    The sessions for every t of the configured uniform grids are built in `setup`, so
    the timed runs do not include building them.
    """

    def __init__(self, name: str, model: BenchModel, description: str, threads: int,
                 steps: tuple[int, ...]):
        super().__init__(name, model, "cpu", description, threads)
        self.steps = steps

    def setup(self) -> None:
        from benchmarks.ort_fixed_t import FixedTimeOrtBackend
        from fmsr_infer.pipeline import Upscaler
        from fmsr_infer.samplers import uniform_grid

        self.backend = FixedTimeOrtBackend(self.bench_model.onnx_path, threads=self.threads)
        start = time.perf_counter()
        self.backend.prebuild(sorted({t for steps in self.steps for t in uniform_grid(steps)}))
        self.build_seconds = time.perf_counter() - start
        self.upscaler = Upscaler(TimedBackend(self.backend, self.timer), self.bench_model.info)

    def details(self) -> dict[str, Any]:
        return {**super().details(), "sessions": len(self.backend.sessions),
                "session_build_s": self.build_seconds}


GPU_RUNTIME_NAMES = {"ort-cuda": "onnxruntime-cuda", "tensorrt": "tensorrt"}


def gpu_runtime_name(kind: str) -> str | None:
    """Return the fmsr_infer.backends name of a GPU backend kind, or None if it has none."""
    from fmsr_infer import backends as runtime_backends

    name = GPU_RUNTIME_NAMES[kind]
    return name if name in runtime_backends.BACKENDS else None


def check_gpu_runtime(kind: str) -> None:
    """Raise BackendUnavailable unless the runtime's `kind` GPU backend can be tried."""
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__})"
        )
    if kind == "ort-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider; install "
                "onnxruntime-gpu in place of onnxruntime"
            )
    if gpu_runtime_name(kind) is None:
        from fmsr_infer import backends as runtime_backends

        raise BackendUnavailable(
            f"fmsr_infer.backends has no {kind} backend (BACKENDS = {runtime_backends.BACKENDS})"
        )


class UnavailableBackend(Backend):
    """A placeholder row: a backend that cannot run here, with the reason."""

    def __init__(self, name: str, device: str, description: str, reason: str):
        self.name = name
        self.device = device
        self.description = description
        self.reason = reason

    def setup(self) -> None:
        raise BackendUnavailable(self.reason)


def build_backends(model: BenchModel, threads: int, skip: dict[str, str],
                   steps: tuple[int, ...]) -> list[Backend]:
    """Return every backend of the comparison, baseline first.

    `skip` maps backend names to the reason they are skipped in this run (for
    example torch.compile under --quick); those become placeholder rows. `steps` are
    the run's step counts, for the prototype's session cache.
    """
    cpu_eager = "PyTorch eager, fp32, NCHW (the baseline)"
    candidates: list[Backend] = [
        TorchBackend(BASELINE, model, cpu_eager),
        TorchBackend("eager-channels-last", model, "PyTorch eager, fp32, channels_last",
                     channels_last=True),
        TorchBackend("torch-compile", model,
                     "torch.compile (Inductor, dynamic=False, freezing), fp32",
                     compile_network=True),
        RuntimeBackend(RUNTIME_CPU, model, "cpu", "fmsr runtime, ONNX Runtime CPU, fp32",
                       threads=threads),
        FixedTimeRuntimeBackend(
            "prototype-ort-fixed-t", model,
            "prototype, not the runtime: ONNX Runtime CPU with t folded into one session "
            "per time value (benchmarks/ort_fixed_t.py)", threads=threads, steps=steps),
        TorchBackend("eager-cuda-fp32", model, "PyTorch eager on CUDA, fp32", device="cuda"),
        TorchBackend("eager-cuda-fp16-autocast", model,
                     "PyTorch eager on CUDA, fp16 autocast", device="cuda", autocast_fp16=True),
        TorchBackend("eager-cuda-graph", model,
                     "PyTorch eager on CUDA, fp32, replayed as a CUDA graph", device="cuda",
                     cuda_graph=True),
    ]
    for kind, name, description in (
        ("ort-cuda", "fmsr-ort-cuda", "fmsr runtime, ONNX Runtime CUDA"),
        ("tensorrt", "fmsr-tensorrt-fp16", "fmsr runtime, TensorRT fp16 engine"),
    ):
        try:
            check_gpu_runtime(kind)
        except BackendUnavailable as exc:
            candidates.append(UnavailableBackend(name, "cuda", description, str(exc)))
            continue
        # NOTE: never run here (no GPU on the machine this was written on); the GPU
        # backends' constructor arguments are assumed to match the CPU one's.
        candidates.append(RuntimeBackend(name, model, gpu_runtime_name(kind), description,
                                         threads=threads, device="cuda"))

    out: list[Backend] = []
    for backend in candidates:
        if backend.name in skip:
            backend = UnavailableBackend(backend.name, backend.device, backend.description,
                                         skip[backend.name])
        out.append(backend)
    return out
