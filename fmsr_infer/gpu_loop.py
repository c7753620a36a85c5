"""The whole sampler on the GPU: conditioning, noise, ODE steps, tile blend and output.

`GpuLoop.upscale` super-resolves one LR image with every step on the device:

1. One copy in: the LR image and the bicubic weight tables (host to device).
2. Per batch of tiles, the cpp_ext CUDA kernels (`fmsr_infer._ext_cuda`) upsample each
   tile's conditioning from the LR and draw its noise (the crop of the image's noise
   field, as in `fmsr_infer.noise`), and set x_0 = temperature · noise.
3. The N-step loop: network calls (TensorRT `execute_async_v3`, or ONNX Runtime CUDA
   with IO binding) and the Euler, Heun or midpoint updates of the float32 state, which
   never leaves the device. With TensorRT, the loop of each tile shape is captured once
   as a CUDA graph and replayed for the next batches. When capture fails, a warning is
   logged and that shape runs plain launches.
4. Each tile's final state is blended into an image-sized accumulator with the
   feathered weights of `fmsr_infer.tiling`; the blend is linear, so blending the
   residual and adding the full conditioning once gives the same image as blending
   images.
5. One copy out: the uint8 image (device to host).

Everything runs on one non-default stream. Host arrays are staged through pinned
buffers so that the copies are asynchronous.

NOTE: this module has not run on a GPU yet. The cuda-python 13.4 and TensorRT 11.4
calls follow their documentation, and the loop's logic is tested on an emulated device
(host memory and the numpy kernels) in tests/test_backends.py.
`benchmarks/gpu_loop_check.py` runs the parts that do not need TensorRT on a GPU.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fmsr_infer.model_info import ModelInfo

log = logging.getLogger(__name__)

# Samplers that the CUDA update kernels implement.
GPU_SAMPLERS = ("euler", "heun", "heun_euler_last", "midpoint")
# Captured graphs (and their TensorRT contexts) kept per loop; the oldest goes first.
MAX_CACHED_SHAPES = 4
# Bytes of the loop's tile buffers per network-input pixel, at the worst case (Heun and
# midpoint, float32 network): x, x_pred, two network outputs and the conditioning, 3
# float32 channels each.
LOOP_BYTES_PER_PIXEL = 5 * 3 * 4
# Bytes of the whole-image buffers per output pixel: the full conditioning and the
# blend accumulator (3 float32 each), the weight sum (float32) and the uint8 image.
IMAGE_BYTES_PER_PIXEL = 3 * 4 + 3 * 4 + 4 + 3

_LR_DTYPES = {
    np.dtype(np.uint8): "uint8",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.float32): "float32",
}


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


class GpuUnavailable(RuntimeError):
    """cuda-python, the CUDA kernels or a CUDA device is missing; the message names which."""


# ---------------------------------------------------------------------------------
# cuda-python helpers


def import_cudart():
    """Return `cuda.bindings.runtime`, or raise GpuUnavailable saying what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise GpuUnavailable(
            f"cuda-python is not installed ({exc}); pip install 'fmsr[gpu]' or "
            "pip install cuda-python"
        ) from exc
    return cudart


def cuda_call(result, what: str = "CUDA call"):
    """Unpack a cuda-python (error, *values) tuple, raising CudaError on failure.

    Returns None, the single value, or a tuple of the values.
    """
    cudart = import_cudart()
    if not isinstance(result, tuple):
        result = (result,)
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        _, message = cudart.cudaGetErrorString(error)
        text = message.decode() if isinstance(message, bytes) else str(message)
        raise CudaError(f"{what} failed: {text} ({error!r})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class GpuFacts:
    """The CUDA device that a TensorRT engine is built for or runs on."""

    device: int
    name: str
    compute_capability: str
    total_memory_bytes: int


def gpu_facts(device: int = 0) -> GpuFacts:
    """Query the name, compute capability and memory of a CUDA device.

    Raises GpuUnavailable when cuda-python is missing or no device responds.
    """
    cudart = import_cudart()
    try:
        props = cuda_call(
            cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})"
        )
    except CudaError as exc:
        raise GpuUnavailable(f"no usable CUDA device {device}: {exc}") from exc
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return GpuFacts(device, str(name), f"{props.major}.{props.minor}", int(props.totalGlobalMem))


class DeviceBuffer:
    """Device memory from cudaMalloc, freed by `free` or when garbage collected."""

    def __init__(self, nbytes: int, what: str = "buffer"):
        cudart = import_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(
            cuda_call(cudart.cudaMalloc(self.nbytes), f"cudaMalloc of {what} ({self.nbytes} bytes)")
        )

    def free(self) -> None:
        if self.ptr:
            cudart = import_cudart()
            cuda_call(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except (CudaError, GpuUnavailable, AttributeError, TypeError):
            # At interpreter shutdown the modules may be gone; there is no caller to tell.
            pass


class PinnedBuffer:
    """Page-locked host memory from cudaMallocHost, with a numpy view for staging copies."""

    def __init__(self, nbytes: int):
        cudart = import_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(
            cuda_call(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost ({self.nbytes} bytes)")
        )
        self.bytes = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    def view(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        return self.bytes[: count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            cudart = import_cudart()
            self.bytes = None
            cuda_call(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except (CudaError, GpuUnavailable, AttributeError, TypeError):
            # At interpreter shutdown the modules may be gone; there is no caller to tell.
            pass


class Stream:
    """A non-blocking CUDA stream: TensorRT syncs extra on the legacy default stream."""

    def __init__(self):
        cudart = import_cudart()
        self.stream = cuda_call(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )
        self.handle = int(self.stream)

    def synchronize(self) -> None:
        cuda_call(import_cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def copy_to_device(self, dst_ptr: int, src: np.ndarray, staging: PinnedBuffer) -> None:
        """Copy a host array into device memory through a pinned staging buffer."""
        cudart = import_cudart()
        src = np.ascontiguousarray(src)
        if src.nbytes > staging.nbytes:
            raise ValueError(
                f"staging buffer of {staging.nbytes} bytes is smaller than {src.nbytes}"
            )
        staging.view(src.shape, src.dtype)[...] = src
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(
            cudart.cudaMemcpyAsync(dst_ptr, staging.ptr, src.nbytes, kind, self.stream),
            "cudaMemcpyAsync H2D",
        )

    def copy_to_host(self, src_ptr: int, shape, dtype, staging: PinnedBuffer) -> np.ndarray:
        """Copy device memory to a new host array; synchronizes the stream."""
        cudart = import_cudart()
        out = staging.view(shape, dtype)
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(
            cudart.cudaMemcpyAsync(staging.ptr, src_ptr, out.nbytes, kind, self.stream),
            "cudaMemcpyAsync D2H",
        )
        self.synchronize()
        return out.copy()

    def memset(self, ptr: int, nbytes: int) -> None:
        cuda_call(import_cudart().cudaMemsetAsync(ptr, 0, nbytes, self.stream), "cudaMemsetAsync")

    def destroy(self) -> None:
        if self.stream is not None:
            cuda_call(import_cudart().cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


# ---------------------------------------------------------------------------------
# Network runners


class NetworkRunner(Protocol):
    """One network call on device buffers, enqueued on a stream.

    Inputs x_t [N, 3, H, W] float32, cond [N, 3, H, W] (`cond_dtype`) and t [N]
    float32; output [N, 3, H, W] (`output_dtype`), all C-contiguous device buffers.
    """

    name: str
    capturable: bool  # whether its calls may be captured into a CUDA graph
    cond_dtype: str  # "float32" or "float16"
    output_dtype: str
    max_shape: tuple[int, int, int] | None  # (batch, height, width) limit, or None

    def prepare(self, batch: int, height: int, width: int):
        """Return a handle for calls of this shape (TensorRT: an execution context)."""

    def enqueue(
        self, handle, x_ptr: int, cond_ptr: int, t_ptr: int, out_ptr: int, stream: int
    ) -> None:
        """Enqueue one call; raises RuntimeError when it cannot be enqueued."""


def loop_buffer_bytes(batch: int, height: int, width: int) -> int:
    """Return the bytes of the loop's tile buffers for a batch of tiles (worst case, float32)."""
    return LOOP_BYTES_PER_PIXEL * batch * height * width


def _itemsize(dtype_name: str) -> int:
    return np.dtype(dtype_name).itemsize


def padded_tables(tables, out_h: int, out_w: int):
    """Extend upsample tables to out_h rows and out_w columns, as padding the conditioning.

    Matches `fmsr_infer.tiling.pad_to_multiple`: the extra rows and columns mirror the
    last ones (numpy "reflect"), or repeat the edge when a padded side is not longer
    than its padding.
    """
    row_w, row_i, col_w, col_i = tables
    pad_h, pad_w = out_h - row_w.shape[0], out_w - col_w.shape[0]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(
            f"tables of {row_w.shape[0]}x{col_w.shape[0]} are larger than {out_h}x{out_w}"
        )
    reflect = row_w.shape[0] > pad_h and col_w.shape[0] > pad_w

    def extend(weights, indices, pad):
        if pad == 0:
            return weights, indices
        n = weights.shape[0]
        source = [n - 2 - k for k in range(pad)] if reflect else [n - 1] * pad
        return (
            np.ascontiguousarray(np.concatenate([weights, weights[source]])),
            np.ascontiguousarray(np.concatenate([indices, indices[source]])),
        )

    row_w, row_i = extend(row_w, row_i, pad_h)
    col_w, col_i = extend(col_w, col_i, pad_w)
    return row_w, row_i, col_w, col_i


# ---------------------------------------------------------------------------------
# The loop


@dataclass
class _ShapePlan:
    """The loop of one (batch, tile shape, time grid, sampler): captured or plain launches."""

    batch: int
    height: int
    width: int
    handle: object  # the runner's handle for this shape
    t_buffer: DeviceBuffer  # t of every network call, float32 [calls, batch]
    graph_exec: object = None
    warmed_up: bool = False
    capture_failed: bool = False

    @property
    def elements(self) -> int:
        return self.batch * 3 * self.height * self.width

    def describe(self) -> str:
        return f"{self.batch} tiles of {self.height}x{self.width}"


def call_times(time_grid: Sequence[float], sampler: str) -> list[float]:
    """Return the t of each network call of `sampler` on `time_grid`, in call order.

    The midpoint's second call is at t_cur + 0.5 · (t_next - t_cur), the double that
    `fmsr_infer.samplers.midpoint` passes to the network.
    """
    intervals = list(itertools.pairwise(time_grid))
    times = []
    for i, (t_cur, t_next) in enumerate(intervals):
        times.append(t_cur)
        last = i == len(intervals) - 1
        if sampler == "heun" or (sampler == "heun_euler_last" and not last):
            times.append(t_next)
        elif sampler == "midpoint":
            times.append(t_cur + 0.5 * (t_next - t_cur))
    return times


class GpuLoop:
    """Run the whole sampler of an image on the GPU around a network runner.

    `tile` is the side of the square tiles in output pixels, and `max_batch` is the
    number of tiles per network call. Both default to the runner's `max_shape` (a
    TensorRT engine's profile max). An image smaller than a tile runs as one tile of
    its own size.
    """

    def __init__(
        self,
        runner: NetworkRunner,
        info: ModelInfo,
        stream: Stream | None = None,
        tile: int | None = None,
        max_batch: int | None = None,
        overlap: int | None = None,
        use_cuda_graphs: bool = True,
    ):
        from fmsr_infer.kernels import load_cuda_kernels
        from fmsr_infer.tiling import DEFAULT_OVERLAP

        try:
            self.kernels = load_cuda_kernels()
        except ImportError as exc:
            raise GpuUnavailable(str(exc)) from exc
        self.runner = runner
        self.info = info
        self.stream = stream or Stream()
        multiple = info.size_multiple
        limit = runner.max_shape
        default_tile = min(limit[1], limit[2]) if limit else 512
        self.tile = int(tile or default_tile) // multiple * multiple
        self.max_batch = int(max_batch or (limit[0] if limit else 4))
        if self.tile < multiple or self.max_batch < 1:
            raise ValueError(f"invalid tile {self.tile} or batch {self.max_batch}")
        if limit and (self.max_batch > limit[0] or self.tile > min(limit[1], limit[2])):
            raise ValueError(
                f"tile {self.tile} and batch {self.max_batch} exceed the network's max shape "
                f"(batch {limit[0]}, {limit[1]}x{limit[2]})"
            )
        self.overlap = min(DEFAULT_OVERLAP if overlap is None else int(overlap), self.tile // 2)
        self.use_cuda_graphs = use_cuda_graphs and runner.capturable
        if use_cuda_graphs and not runner.capturable:
            log.info(
                "%s calls cannot be captured into CUDA graphs; the loop runs plain launches",
                runner.name,
            )

        # Tile buffers at the max shape, shared by every shape's graph: the loop runs
        # one batch at a time on one stream, so no two graphs use them at once.
        elements = self.max_batch * 3 * self.tile * self.tile
        out_bytes = _itemsize(runner.output_dtype) * elements
        self.x = DeviceBuffer(4 * elements, "state x")
        # x_pred is Heun's predictor or the midpoint method's half step x_mid.
        self.x_pred = DeviceBuffer(4 * elements, "predictor x_pred")
        # out0 also stores the float32 noise until the loop overwrites it.
        self.out0 = DeviceBuffer(max(out_bytes, 4 * elements), "network output")
        self.out1 = DeviceBuffer(out_bytes, "second network output")
        self.cond = DeviceBuffer(_itemsize(runner.cond_dtype) * elements, "conditioning tiles")
        self._plans: OrderedDict[tuple, _ShapePlan] = OrderedDict()
        self._tile_weights: dict[tuple, DeviceBuffer] = {}
        log.info(
            "GPU loop: %s, tiles of %d px (overlap %d), %d per batch, CUDA graphs %s",
            runner.name,
            self.tile,
            self.overlap,
            self.max_batch,
            "on" if self.use_cuda_graphs else "off",
        )

    # -- per shape ---------------------------------------------------------------

    def _plan(self, batch: int, height: int, width: int, grid: tuple, sampler: str) -> _ShapePlan:
        key = (batch, height, width, grid, sampler)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        while len(self._plans) >= MAX_CACHED_SHAPES:
            _, old = self._plans.popitem(last=False)
            self._destroy_graph(old)

        times = np.asarray(call_times(grid, sampler), dtype=np.float32)
        t_values = np.ascontiguousarray(np.repeat(times[:, None], batch, axis=1))
        t_buffer = DeviceBuffer(t_values.nbytes, "time values")
        staging = PinnedBuffer(t_values.nbytes)
        self.stream.copy_to_device(t_buffer.ptr, t_values, staging)
        self.stream.synchronize()  # before `staging` may be freed
        plan = _ShapePlan(batch, height, width, self.runner.prepare(batch, height, width), t_buffer)
        self._plans[key] = plan
        return plan

    def _destroy_graph(self, plan: _ShapePlan) -> None:
        if plan.graph_exec is not None:
            cuda_call(import_cudart().cudaGraphExecDestroy(plan.graph_exec), "cudaGraphExecDestroy")
            plan.graph_exec = None

    # -- the N-step loop ---------------------------------------------------------

    def _enqueue_steps(self, plan: _ShapePlan, grid: tuple, sampler: str) -> None:
        """Enqueue the whole ODE loop on the stream: network calls and state updates.

        Every argument is fixed for the plan (buffers, times, step sizes), which is
        what lets a captured graph replay it for another batch of the same shape.
        """
        k = self.kernels
        stream = self.stream.handle
        dtype = self.runner.output_dtype
        x1 = self.info.prediction == "x1"
        floor = float(self.info.t_floor)
        n = plan.elements
        calls = 0

        def network(x_ptr: int, out_ptr: int) -> None:
            nonlocal calls
            t_ptr = plan.t_buffer.ptr + 4 * plan.batch * calls
            self.runner.enqueue(plan.handle, x_ptr, self.cond.ptr, t_ptr, out_ptr, stream)
            calls += 1

        intervals = list(itertools.pairwise(grid))
        for i, (t_cur, t_next) in enumerate(intervals):
            dt = t_next - t_cur
            last = i == len(intervals) - 1

            # Network at (x, t_cur); Euler steps end here.
            network(self.x.ptr, self.out0.ptr)
            if sampler == "euler" or (sampler == "heun_euler_last" and last):
                if x1:
                    k.euler_step_x1(self.x.ptr, self.out0.ptr, dtype, n, t_cur, dt, floor, stream)
                else:
                    k.euler_step(self.x.ptr, self.out0.ptr, dtype, n, dt, stream)
                continue

            if sampler == "midpoint":
                self._enqueue_midpoint(network, n, t_cur, dt)
                continue

            # Heun: Euler predictor, network at (x_pred, t_next), trapezoidal corrector.
            self._enqueue_predictor(n, t_cur, dt)
            network(self.x_pred.ptr, self.out1.ptr)
            if x1:
                k.heun_correct_x1(
                    self.x.ptr,
                    self.out0.ptr,
                    self.x_pred.ptr,
                    self.out1.ptr,
                    dtype,
                    n,
                    t_cur,
                    dt,
                    floor,
                    stream,
                )
            else:
                k.heun_correct(self.x.ptr, self.out0.ptr, self.out1.ptr, dtype, n, dt, stream)

    def _enqueue_predictor(self, n: int, t_cur: float, step: float) -> None:
        """Enqueue the Euler predictor x_pred = x + step · v(x, t_cur) from the output in out0."""
        k = self.kernels
        stream = self.stream.handle
        dtype = self.runner.output_dtype
        if self.info.prediction == "x1":
            floor = float(self.info.t_floor)
            k.heun_predict_x1(
                self.x.ptr, self.out0.ptr, dtype, self.x_pred.ptr, n, t_cur, step, floor, stream
            )
        else:
            k.heun_predict(self.x.ptr, self.out0.ptr, dtype, self.x_pred.ptr, n, step, stream)

    def _enqueue_midpoint(self, network, n: int, t_cur: float, dt: float) -> None:
        """Enqueue the rest of a midpoint interval, after the network call at (x, t_cur).

        That call's output is in out0. The half step x_mid goes into x_pred, the network
        output at (x_mid, t_cur + dt/2) into out1, and the full step updates x.
        """
        k = self.kernels
        stream = self.stream.handle
        dtype = self.runner.output_dtype
        x1 = self.info.prediction == "x1"
        floor = float(self.info.t_floor)

        # Half an Euler step to the midpoint: x_mid = x + (dt/2) · v(x, t_cur).
        self._enqueue_predictor(n, t_cur, 0.5 * dt)

        # Network at the midpoint, then the full step x += dt · v(x_mid, t_cur + dt/2).
        network(self.x_pred.ptr, self.out1.ptr)
        if x1:
            k.midpoint_step_x1(
                self.x.ptr, self.x_pred.ptr, self.out1.ptr, dtype, n, t_cur, dt, floor, stream
            )
        else:
            k.euler_step(self.x.ptr, self.out1.ptr, dtype, n, dt, stream)

    def _run_steps(self, plan: _ShapePlan, grid: tuple, sampler: str) -> None:
        """Run the loop: the first batch of a shape with plain launches, the second
        captures a CUDA graph and launches it, later ones replay it.
        """
        cudart = import_cudart()
        if (
            plan.graph_exec is None
            and self.use_cuda_graphs
            and plan.warmed_up
            and not plan.capture_failed
        ):
            plan.graph_exec = self._capture(plan, grid, sampler)
        if plan.graph_exec is not None:
            cuda_call(
                cudart.cudaGraphLaunch(plan.graph_exec, self.stream.stream), "cudaGraphLaunch"
            )
            return
        self._enqueue_steps(plan, grid, sampler)
        if self.use_cuda_graphs and not plan.warmed_up:
            # Capture only after a plain run has finished, so that TensorRT's lazy
            # initialization is not recorded (trtexec does the same).
            self.stream.synchronize()
            plan.warmed_up = True

    def _capture(self, plan: _ShapePlan, grid: tuple, sampler: str):
        """Capture the plan's loop into an executable graph; None after logging a failure.

        Capture records the launches without running them; the caller launches the graph.
        """
        cudart = import_cudart()
        success = cudart.cudaError_t.cudaSuccess
        self.stream.synchronize()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(cudart.cudaStreamBeginCapture(self.stream.stream, mode), "cudaStreamBeginCapture")
        failure: Exception | None = None
        try:
            self._enqueue_steps(plan, grid, sampler)
        except (RuntimeError, ValueError) as exc:
            failure = exc

        # End the capture in every case, or the stream stays in capture mode.
        end_error, graph = cudart.cudaStreamEndCapture(self.stream.stream)
        graph_exec = None
        if end_error != success:
            failure = failure or CudaError(f"cudaStreamEndCapture failed: {end_error!r}")
        else:
            if failure is None:
                error, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
                if error != success:
                    failure = CudaError(f"cudaGraphInstantiate failed: {error!r}")
                    graph_exec = None
            # The executable graph is independent of the captured one.
            cudart.cudaGraphDestroy(graph)
        if failure is not None:
            # A failed capture can leave a launch error behind; clear it.
            cudart.cudaGetLastError()
            plan.capture_failed = True
            log.warning(
                "CUDA graph capture failed for %s (%s); it runs plain launches",
                plan.describe(),
                failure,
            )
            return None
        log.info(
            "captured the %d network calls of %s as one CUDA graph",
            len(call_times(grid, sampler)),
            plan.describe(),
        )
        return graph_exec

    # -- one image ---------------------------------------------------------------

    def _tile_weight(self, tile, height: int, width: int) -> DeviceBuffer:
        """Return the device copy of a tile's blend weight, cached by shape and edges."""
        from fmsr_infer.tiling import tile_weight

        key = (
            tile.height,
            tile.width,
            tile.row0 > 0,
            tile.row0 + tile.height < height,
            tile.col0 > 0,
            tile.col0 + tile.width < width,
        )
        buffer = self._tile_weights.get(key)
        if buffer is None:
            weight = np.ascontiguousarray(
                tile_weight(tile, height, width, self.overlap), dtype=np.float32
            )
            buffer = DeviceBuffer(weight.nbytes, "tile weight")
            staging = PinnedBuffer(weight.nbytes)
            self.stream.copy_to_device(buffer.ptr, weight, staging)
            self.stream.synchronize()  # before `staging` may be freed
            self._tile_weights[key] = buffer
        return buffer

    def upscale(
        self,
        lr: np.ndarray,
        time_grid: Sequence[float],
        sampler: str,
        seed: int = 0,
        temperature: float = 0.0,
    ) -> tuple[np.ndarray, int, int]:
        """Super-resolve an [h, w, 3] RGB image (uint8, uint16 or float32 in [0, 1]).

        Returns (uint8 image [scale·h, scale·w, 3], network calls per tile, tiles).
        The time grid runs from 0 (noise) to 1 (image), as in `fmsr_infer.samplers`.
        """
        from fmsr_infer.noise import check_seed
        from fmsr_infer.resize import upsample_tables
        from fmsr_infer.tiling import TileSettings, plan_tiles

        if sampler not in GPU_SAMPLERS:
            raise ValueError(
                f"sampler {sampler!r} is not implemented by the CUDA kernels; use one of "
                f"{GPU_SAMPLERS}, or the CPU backend"
            )
        lr = np.ascontiguousarray(lr)
        if lr.ndim != 3 or lr.shape[2] != 3:
            raise ValueError(f"upscale expects an [h, w, 3] RGB array, got shape {lr.shape}")
        if lr.dtype not in _LR_DTYPES:
            raise ValueError(f"LR dtype must be uint8, uint16 or float32, got {lr.dtype}")
        seed = check_seed(seed)
        grid = tuple(float(t) for t in time_grid)
        if len(grid) < 2:
            raise ValueError(f"a time grid needs at least 2 times, got {list(time_grid)}")
        k = self.kernels
        info = self.info
        stream = self.stream.handle
        scale, multiple = info.scale, info.size_multiple
        lr_h, lr_w = lr.shape[:2]
        out_h, out_w = lr_h * scale, lr_w * scale
        height = out_h + (-out_h) % multiple
        width = out_w + (-out_w) % multiple
        tiles = plan_tiles(
            height, width, TileSettings(self.tile, self.overlap, self.max_batch), multiple
        )
        residual = info.target == "residual"
        cond_dtype = self.runner.cond_dtype

        # One copy in: the LR image and its upsample tables, padded like the CPU path.
        tables = padded_tables(upsample_tables(lr_h, lr_w, scale), height, width)
        row_w, row_i, col_w, col_i = tables
        host_in = [lr, row_w, row_i, col_w, col_i]
        staging = PinnedBuffer(sum(a.nbytes for a in host_in))
        device_in = [DeviceBuffer(a.nbytes, "LR input") for a in host_in]
        offset = 0
        cudart = import_cudart()
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for array, buffer in zip(host_in, device_in):
            staging.bytes[offset : offset + array.nbytes] = (
                np.ascontiguousarray(array).view(np.uint8).ravel()
            )
            cuda_call(
                cudart.cudaMemcpyAsync(
                    buffer.ptr, staging.ptr + offset, array.nbytes, kind, self.stream.stream
                ),
                "cudaMemcpyAsync H2D",
            )
            offset += array.nbytes
        lr_dev, row_w_dev, row_i_dev, col_w_dev, col_i_dev = device_in
        lr_dtype = _LR_DTYPES[lr.dtype]
        row_taps, col_taps = row_w.shape[1], col_w.shape[1]

        def upsample_into(out_ptr: int, dtype: str, row0: int, col0: int, h: int, w: int) -> None:
            k.upsample(
                lr_dev.ptr,
                lr_dtype,
                1,
                lr_h,
                lr_w,
                3,
                row_w_dev.ptr,
                row_i_dev.ptr,
                height,
                row_taps,
                col_w_dev.ptr,
                col_i_dev.ptr,
                width,
                col_taps,
                row0,
                col0,
                h,
                w,
                out_ptr,
                dtype,
                stream,
            )

        # Whole-image buffers: the blend accumulator and, for a residual target, the
        # full conditioning that the blended residual is added to.
        pixels = height * width
        accum = DeviceBuffer(4 * 3 * pixels, "blend accumulator")
        weight_sum = DeviceBuffer(4 * pixels, "blend weight sum")
        image = DeviceBuffer(3 * pixels, "output image")
        self.stream.memset(accum.ptr, accum.nbytes)
        self.stream.memset(weight_sum.ptr, weight_sum.nbytes)
        full_cond = None
        if residual:
            full_cond = DeviceBuffer(4 * 3 * pixels, "full conditioning")
            upsample_into(full_cond.ptr, "float32", 0, 0, height, width)

        calls = len(call_times(grid, sampler))
        for start in range(0, len(tiles), self.max_batch):
            batch = tiles[start : start + self.max_batch]
            tile_h, tile_w = batch[0].height, batch[0].width
            plan = self._plan(len(batch), tile_h, tile_w, grid, sampler)
            tile_elements = 3 * tile_h * tile_w

            # Conditioning and noise of each tile: crops of the whole image's.
            for i, tile in enumerate(batch):
                cond_ptr = self.cond.ptr + i * tile_elements * _itemsize(cond_dtype)
                upsample_into(cond_ptr, cond_dtype, tile.row0, tile.col0, tile_h, tile_w)
            self.stream.memset(self.x.ptr, 4 * plan.elements)
            if temperature != 0.0:
                for i, tile in enumerate(batch):
                    noise_ptr = self.out0.ptr + 4 * i * tile_elements
                    k.gaussian_noise(
                        noise_ptr, seed, 3, tile_h, tile_w, tile.row0, tile.col0, stream
                    )
                # x = 0 + temperature * noise, the same float32 product as the CPU path.
                k.euler_step(
                    self.x.ptr, self.out0.ptr, "float32", plan.elements, float(temperature), stream
                )

            # The ODE loop, on the device from x_0 to x_1.
            self._run_steps(plan, grid, sampler)

            # Blend each tile's final state into the image.
            for i, tile in enumerate(batch):
                weight = self._tile_weight(tile, height, width)
                k.blend_tile(
                    accum.ptr,
                    weight_sum.ptr,
                    3,
                    height,
                    width,
                    self.x.ptr + 4 * i * tile_elements,
                    "float32",
                    weight.ptr,
                    tile_h,
                    tile_w,
                    tile.row0,
                    tile.col0,
                    stream,
                )

        # The blended state to an image: upsample + x / scale for a residual target.
        k.normalize_blend(accum.ptr, weight_sum.ptr, accum.ptr, 3, height, width, stream)
        if residual:
            k.state_to_image(
                accum.ptr,
                full_cond.ptr,
                "float32",
                1,
                3,
                height,
                width,
                float(info.residual_scale),
                image.ptr,
                "uint8",
                stream,
            )
        else:
            k.state_to_image(
                accum.ptr, 0, "float32", 1, 3, height, width, 1.0, image.ptr, "uint8", stream
            )

        # One copy out.
        out = self.stream.copy_to_host(
            image.ptr, (height, width, 3), np.uint8, PinnedBuffer(image.nbytes)
        )
        return out[:out_h, :out_w], calls, len(tiles)

    def graph_counts(self) -> tuple[int, int]:
        """Return (shapes replayed from a CUDA graph, shapes whose capture failed)."""
        captured = sum(1 for plan in self._plans.values() if plan.graph_exec is not None)
        failed = sum(1 for plan in self._plans.values() if plan.capture_failed)
        return captured, failed

    def close(self) -> None:
        """Destroy the captured graphs; buffers go with the object."""
        for plan in self._plans.values():
            self._destroy_graph(plan)
        self._plans.clear()
