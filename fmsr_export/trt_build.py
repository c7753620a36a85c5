"""Build the fp16 TensorRT engine of an fp16 ONNX model, sized to a GPU memory budget.

TensorRT 11 networks are strongly typed: the engine runs each layer in the precision of
the ONNX graph, so the input here is the mixed-precision model of `fmsr_export.fp16`.
The build:

1. Parses the ONNX file and reports each parser error with its node's name and op.
2. Plans one optimization profile over (batch, tile height, tile width) from the
   memory budget. `--gpu-mem` minus `--gpu-reserve` (display, CUDA context, the GPU
   loop's whole-image buffers) and the workspace pool must hold the engine's weights,
   its activations at the profile max and the loop's tile buffers. The activations are
   estimated from the ONNX graph: the peak live tensor bytes in execution order, times
   `ACTIVATION_SAFETY`.
3. Builds with a workspace pool limit, the builder optimization level, detailed
   profiling verbosity (for the inspector) and a timing cache file that later builds
   reuse.
4. Checks the built engine: its device memory at the profile max (TensorRT's own
   figure) plus the rest must fit the budget, else the profile shrinks and the build
   repeats; and the engine inspector must show fp16 layers and no fp32 convolution.
5. Writes `<model>.engine`, `<model>.engine.json` (TensorRT version, GPU, profile,
   precision, the ONNX sha256, memory figures) and the timing cache.

Run it on the GPU that will run the engine, with `fmsr-export --fp16` or on an
existing fp16 ONNX file: `python -m fmsr_export.trt_build MODEL_fp16.onnx`.

NOTE: nothing here has run with TensorRT yet (no GPU was available); the API calls
follow the TensorRT 11.4 Python documentation. The pure parts (profile planning,
inspector parsing, metadata) are tested on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from fmsr_infer.backend_trt import (
    ENGINE_FORMAT,
    EngineMetadata,
    engine_metadata_path,
    engine_path_for,
    import_tensorrt,
)
from fmsr_infer.gpu_loop import loop_buffer_bytes

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
# An RTX 2050 laptop GPU has 4 GB; the reserve covers the display, the CUDA context
# and TensorRT's libraries, and the GPU loop's whole-image buffers (31 bytes per output
# pixel: about 260 MB for a 3840x2160 output).
# NOTE: the reserve is an estimate; it has not been measured on an RTX 2050.
DEFAULT_GPU_MEM_GIB = 4.0
DEFAULT_RESERVE_GIB = 1.0
DEFAULT_WORKSPACE_MIB = 512
DEFAULT_OPT_LEVEL = 3
MAX_TILE = 512
MIN_TILE = 64
TILE_STEP = 64
MAX_BATCH = 8
# TensorRT's activation memory over the ONNX peak-live estimate (fusions lower it,
# tactic scratch and reformat layers raise it); the build checks the real figure.
ACTIVATION_SAFETY = 2.0
MAX_BUILD_ATTEMPTS = 3
TIMING_CACHE_NAME = "fmsr_trt_timing.cache"

_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}


class EngineBuildError(RuntimeError):
    """The engine could not be built or failed a check; the message names the cause."""


# ---------------------------------------------------------------------------------
# Memory budget and profile


@dataclass(frozen=True)
class MemoryBudget:
    """Device memory for the engine and the loop, in bytes."""

    gpu_memory_bytes: int
    reserve_bytes: int
    workspace_bytes: int

    @property
    def usable_bytes(self) -> int:
        """The bytes left for weights, activations and tile buffers."""
        return self.gpu_memory_bytes - self.reserve_bytes - self.workspace_bytes

    @classmethod
    def from_gib(cls, gpu_mem_gib: float, reserve_gib: float, workspace_mib: float) -> MemoryBudget:
        budget = cls(int(gpu_mem_gib * GIB), int(reserve_gib * GIB), int(workspace_mib * MIB))
        if budget.usable_bytes <= 0:
            raise ValueError(
                f"--gpu-mem {gpu_mem_gib} GiB leaves nothing after the reserve {reserve_gib} GiB "
                f"and the workspace {workspace_mib} MiB"
            )
        return budget


@dataclass(frozen=True)
class Profile:
    """An optimization profile: (batch, height, width) of x_t and cond at min, opt, max."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _round_down(value: int, multiple: int) -> int:
    return value // multiple * multiple


def tile_bytes_per_pixel(activation_bytes_per_pixel: float) -> float:
    """Return the planned bytes per network-input pixel: activations plus tile buffers."""
    return activation_bytes_per_pixel * ACTIVATION_SAFETY + loop_buffer_bytes(1, 1, 1)


def plan_profile(
    budget: MemoryBudget,
    activation_bytes_per_pixel: float,
    weights_bytes: int,
    size_multiple: int,
    max_tile: int = MAX_TILE,
    max_batch: int = MAX_BATCH,
) -> Profile:
    """Choose the profile from the budget: the largest tile first, then the most tiles.

    Tiles are square, a multiple of `TILE_STEP` and of `size_multiple`, from `max_tile`
    down to `MIN_TILE`; a larger tile wastes less of its area on the blend overlap. The
    opt shape is the max, since full batches of full tiles are the common call. The
    min shape is one image of `size_multiple` pixels, so small images fit.
    Raises ValueError when not even one `MIN_TILE` tile fits.
    """
    step = math.lcm(TILE_STEP, size_multiple)
    available = budget.usable_bytes - weights_bytes
    per_pixel = tile_bytes_per_pixel(activation_bytes_per_pixel)
    tile = _round_down(max_tile, step)
    while tile >= max(MIN_TILE, step):
        batch = min(max_batch, int(available // (per_pixel * tile * tile)))
        if batch >= 1:
            return Profile(
                min=(1, size_multiple, size_multiple),
                opt=(batch, tile, tile),
                max=(batch, tile, tile),
            )
        tile -= step
    raise ValueError(
        f"the memory budget leaves {available / MIB:.0f} MiB, but one {MIN_TILE}x{MIN_TILE} "
        f"tile needs {per_pixel * MIN_TILE * MIN_TILE / MIB:.1f} MiB; raise --gpu-mem or "
        "lower --gpu-reserve or --workspace"
    )


def shrink_profile(profile: Profile, size_multiple: int) -> Profile | None:
    """Return a smaller profile (half the batch, else a smaller tile), or None at the minimum."""
    batch, tile, _ = profile.max
    if batch > 1:
        batch //= 2
    else:
        step = math.lcm(TILE_STEP, size_multiple)
        tile = _round_down(tile - step, step)
        if tile < max(MIN_TILE, step):
            return None
    return Profile(min=profile.min, opt=(batch, tile, tile), max=(batch, tile, tile))


def fit_budget_to_gpu(budget: MemoryBudget, total_bytes: int, gpu_name: str) -> MemoryBudget:
    """Cap the budget at the GPU's memory, or raise ValueError when it is far above it.

    A "4 GB" card reports a little less than 4 GiB (the driver keeps some), so a budget
    up to 10 % above the GPU's memory is taken as its nominal size and capped.
    """
    if budget.gpu_memory_bytes <= total_bytes:
        return budget
    if budget.gpu_memory_bytes > 1.1 * total_bytes:
        raise ValueError(
            f"--gpu-mem {budget.gpu_memory_bytes / GIB:.2f} GiB exceeds the "
            f"{total_bytes / GIB:.2f} GiB of {gpu_name}; build on the GPU that runs the engine"
        )
    log.info("%s has %.2f GiB; the budget is capped at that", gpu_name, total_bytes / GIB)
    return MemoryBudget(total_bytes, budget.reserve_bytes, budget.workspace_bytes)


def required_bytes(
    budget: MemoryBudget, device_memory: int, engine_bytes: int, profile: Profile
) -> int:
    """Return the device memory that running the engine at the profile max needs.

    TensorRT's device memory (activations and tactic scratch), the engine's weights
    (its serialized size, an upper bound) and the loop's tile buffers, plus the reserve.
    """
    batch, height, width = profile.max
    return (
        budget.reserve_bytes
        + device_memory
        + engine_bytes
        + loop_buffer_bytes(batch, height, width)
    )


# ---------------------------------------------------------------------------------
# Activation estimate from the ONNX graph


def activation_bytes_per_pixel(model, reference: int = 64) -> float:
    """Estimate the activation bytes per input pixel at batch 1 from the ONNX graph.

    Runs shape inference for a [1, 3, reference, reference] input and walks the nodes
    in graph order, adding each output when produced and dropping each tensor after its
    last reader: the peak of that sum, divided by the pixels. Weights are not counted.
    NOTE: TensorRT fuses and reorders layers, so its peak differs; the build checks
    TensorRT's own figure against the budget.
    """
    import copy

    import onnx

    model = copy.deepcopy(model)
    del model.graph.value_info[:]
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        concrete = [1, 3, reference, reference] if len(dims) == 4 else [1] * len(dims)
        for dim, size in zip(dims, concrete):
            dim.ClearField("dim_param")
            dim.dim_value = size
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)

    sizes = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        sizes[value.name] = math.prod(dims) * _ELEMENT_BYTES.get(tensor.elem_type, 4)
    last_reader = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            last_reader[name] = index
    outputs = {value.name for value in model.graph.output}

    live = {value.name for value in model.graph.input}
    current = sum(sizes.get(name, 0) for name in live)
    peak = current
    for index, node in enumerate(model.graph.node):
        for name in node.output:
            live.add(name)
            current += sizes.get(name, 0)
        peak = max(peak, current)
        for name in set(node.input):
            if name in live and last_reader.get(name) == index and name not in outputs:
                live.discard(name)
                current -= sizes.get(name, 0)
    return peak / (reference * reference)


def weights_bytes(model) -> int:
    """Return the bytes of the model's initializers, in their stored types."""
    import numpy as np
    from onnx import numpy_helper

    return sum(
        int(np.asarray(numpy_helper.to_array(init)).nbytes) for init in model.graph.initializer
    )


# ---------------------------------------------------------------------------------
# Engine checks


def _precision_of(format_text: str) -> str:
    text = format_text.lower()
    if "fp16" in text or "half" in text:
        return "fp16"
    if "fp32" in text or "float" in text:
        return "fp32"
    return "other"


def summarize_layer_precisions(engine_information: str) -> dict:
    """Count the engine's layers by precision from the inspector's JSON.

    A layer is fp16 when one of its outputs has an fp16 format ("Half", "... FP16
    format ..."), fp32 when its outputs are fp32, else "other". Returns {"fp16": n,
    "fp32": n, "other": n, "fp32_convolutions": [names], "layer_types": [types]}.
    Raises EngineBuildError when the JSON lists names only, which means the engine
    was built without ProfilingVerbosity.DETAILED.
    """
    try:
        info = json.loads(engine_information)
    except json.JSONDecodeError as exc:
        raise EngineBuildError(f"the engine inspector returned invalid JSON: {exc}") from exc
    layers = info.get("Layers", []) if isinstance(info, dict) else info
    if layers and not isinstance(layers[0], dict):
        raise EngineBuildError(
            "the engine inspector lists layer names only; build with "
            "ProfilingVerbosity.DETAILED to check precisions"
        )
    counts = {"fp16": 0, "fp32": 0, "other": 0}
    fp32_convolutions = []
    layer_types = set()
    for layer in layers:
        layer_type = str(layer.get("LayerType", ""))
        parameter_type = str(layer.get("ParameterType", ""))
        layer_types.add(layer_type)
        formats = [str(o.get("Format/Datatype", "")) for o in layer.get("Outputs", [])]
        precisions = {_precision_of(f) for f in formats}
        if "fp16" in precisions:
            precision = "fp16"
        elif "fp32" in precisions:
            precision = "fp32"
        else:
            precision = "other"
        counts[precision] += 1
        is_convolution = "convolution" in (layer_type + parameter_type).lower()
        if is_convolution and precision == "fp32":
            fp32_convolutions.append(str(layer.get("Name", "?")))
    return {**counts, "fp32_convolutions": fp32_convolutions, "layer_types": sorted(layer_types)}


def check_fp16_engine(summary: dict) -> None:
    """Raise EngineBuildError unless the engine runs fp16 layers and no fp32 convolution.

    This catches the TensorRT 11 trap of a build that quietly ran in fp32 (for example
    an fp32 ONNX file given in place of the fp16 one).
    NOTE: a Myelin-compiled region shows the inspector only its fp32 graph I/O. If
    TensorRT compiled the whole network that way, this check would fail even though
    the region runs fp16 inside.
    """
    if summary["fp32_convolutions"]:
        names = summary["fp32_convolutions"]
        raise EngineBuildError(
            f"the engine runs {len(names)} convolutions in fp32 ({', '.join(names[:5])}); "
            "build it from the fp16 ONNX that fmsr-export --fp16 writes"
        )
    if summary["fp16"] == 0:
        raise EngineBuildError(
            f"the engine has no fp16 layer ({summary['fp32']} fp32, {summary['other']} other; "
            f"layer types {summary['layer_types']}); build it from the fp16 ONNX that "
            "fmsr-export --fp16 writes"
        )


def format_parser_errors(parser, graph) -> str:
    """Describe every ONNX parser error with its node's name and op type."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node_index = error.node()
        name = op = None
        if hasattr(error, "node_name"):
            name, op = error.node_name(), error.node_operator()
        if not name and 0 <= node_index < len(graph.node):
            name, op = graph.node[node_index].name, graph.node[node_index].op_type
        where = f"node {name!r} ({op})" if name else "the graph"
        lines.append(f"{where}: {error.desc()} [{error.code()}]")
    return "; ".join(lines) or "the parser failed without an error message"


# ---------------------------------------------------------------------------------
# Build


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_fp16_metadata(onnx_path: Path) -> dict:
    from fmsr_infer.model_info import metadata_path

    meta_path = metadata_path(onnx_path)
    if not meta_path.is_file():
        raise EngineBuildError(
            f"metadata {meta_path} not found; export with fmsr-export --fp16, which writes it"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("precision") != "fp16":
        raise EngineBuildError(
            f"{onnx_path} is a {meta.get('precision')!r} model; TensorRT 11 builds the precision "
            "of the graph, so build from the fp16 ONNX that fmsr-export --fp16 writes"
        )
    return meta


def _build_once(
    trt,
    logger,
    onnx_path: Path,
    graph,
    profile: Profile,
    budget: MemoryBudget,
    opt_level: int,
    cache_bytes: bytes,
):
    """Build one serialized engine; returns (plan bytes, timing cache bytes)."""
    builder = trt.Builder(logger)
    # Strongly typed, the only kind of network in TensorRT 11: flags 0.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(
            f"TensorRT could not parse {onnx_path}: {format_parser_errors(parser, graph)}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, budget.workspace_bytes)
    config.builder_optimization_level = opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    # Auxiliary streams run branches in parallel but add activation memory. The UNet is
    # nearly a chain, so one stream loses little speed and saves memory.
    config.max_aux_streams = 0

    # The timing cache: tactic timings from earlier builds on this GPU skip re-timing.
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("the timing cache was made on another GPU or TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    # One profile; x_t and cond share it, t follows the batch.
    trt_profile = builder.create_optimization_profile()
    for name in ("x_t", "cond"):
        shapes = [(n, 3, h, w) for n, h, w in (profile.min, profile.opt, profile.max)]
        trt_profile.set_shape(name, *shapes)
    trt_profile.set_shape("t", (profile.min[0],), (profile.opt[0],), (profile.max[0],))
    config.add_optimization_profile(trt_profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"TensorRT failed to build the engine of {onnx_path} for profile max {profile.max} "
            "(see its log above); if it ran out of memory, lower --workspace or --gpu-mem"
        )
    return bytes(memoryview(plan)), bytes(memoryview(config.get_timing_cache().serialize()))


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    budget: MemoryBudget | None = None,
    opt_level: int = DEFAULT_OPT_LEVEL,
    timing_cache: str | Path | None = None,
    max_tile: int = MAX_TILE,
    max_batch: int = MAX_BATCH,
    device: int = 0,
) -> tuple[Path, EngineMetadata]:
    """Build, check and write the fp16 engine of an fp16 ONNX model (see the module docstring).

    Returns (engine path, metadata). Raises EngineBuildError on any failed step and
    BackendUnavailable (from fmsr_infer) when TensorRT, cuda-python or the GPU is missing.
    """
    import onnx

    from fmsr_export.fp16 import sha256_file
    from fmsr_infer.backends import BackendUnavailable
    from fmsr_infer.gpu_loop import GpuUnavailable, gpu_facts

    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else engine_path_for(onnx_path)
    budget = budget or MemoryBudget.from_gib(
        DEFAULT_GPU_MEM_GIB, DEFAULT_RESERVE_GIB, DEFAULT_WORKSPACE_MIB
    )
    timing_cache = Path(timing_cache) if timing_cache else engine_path.parent / TIMING_CACHE_NAME
    if not 0 <= opt_level <= 5:
        raise ValueError(f"the builder optimization level must be 0..5, got {opt_level}")

    # Inputs: the fp16 model, its metadata, TensorRT and the GPU.
    model_meta = _read_fp16_metadata(onnx_path)
    trt = import_tensorrt()
    try:
        gpu = gpu_facts(device)
    except GpuUnavailable as exc:
        raise BackendUnavailable(f"building a TensorRT engine needs a CUDA GPU: {exc}") from exc
    budget = fit_budget_to_gpu(budget, gpu.total_memory_bytes, gpu.name)
    recorded = model_meta.get("onnx_sha256")
    if recorded != sha256_file(onnx_path):
        raise EngineBuildError(
            f"{onnx_path} does not match the sha256 in its metadata; re-export it with "
            "fmsr-export --fp16"
        )
    model = onnx.load(str(onnx_path))
    size_multiple = int(model_meta.get("size_multiple", 1))

    # The first profile, from the graph's activation estimate.
    per_pixel = activation_bytes_per_pixel(model)
    profile = plan_profile(
        budget, per_pixel, weights_bytes(model), size_multiple, max_tile, max_batch
    )
    log.info(
        "estimated %.0f activation bytes per pixel; first profile max %s for a %.2f GiB budget",
        per_pixel,
        profile.max,
        budget.gpu_memory_bytes / GIB,
    )

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    for attempt in range(1, MAX_BUILD_ATTEMPTS + 1):
        # Build, then measure what the engine needs at the profile max.
        plan, cache_bytes = _build_once(
            trt, logger, onnx_path, model.graph, profile, budget, opt_level, cache_bytes
        )
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineBuildError(
                "TensorRT could not deserialize the engine it just built (see its log above)"
            )
        device_memory = int(engine.get_device_memory_size_for_profile_v2(0))
        needed = required_bytes(budget, device_memory, len(plan), profile)
        log.info(
            "build %d: profile max %s needs %.0f MiB of device memory (%.0f MiB activations)",
            attempt,
            profile.max,
            needed / MIB,
            device_memory / MIB,
        )
        if needed <= budget.gpu_memory_bytes:
            break
        smaller = shrink_profile(profile, size_multiple)
        if smaller is None or attempt == MAX_BUILD_ATTEMPTS:
            raise EngineBuildError(
                f"the engine needs {needed / MIB:.0f} MiB at profile max {profile.max}, more "
                f"than the {budget.gpu_memory_bytes / MIB:.0f} MiB budget; raise --gpu-mem or "
                "lower --max-tile or --max-batch"
            )
        profile = smaller

    # The precision check: the inspector must show fp16 layers.
    inspector = engine.create_engine_inspector()
    summary = summarize_layer_precisions(
        inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    )
    check_fp16_engine(summary)

    meta = EngineMetadata(
        format=ENGINE_FORMAT,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision="fp16",
        profile=profile.to_dict(),
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        source_onnx_sha256=str(model_meta.get("source_onnx_sha256", "")),
        device_memory_bytes=device_memory,
        engine_bytes=len(plan),
        workspace_bytes=budget.workspace_bytes,
        builder_optimization_level=opt_level,
        gpu_memory_budget_bytes=budget.gpu_memory_bytes,
        reserve_bytes=budget.reserve_bytes,
        layer_precisions={k: summary[k] for k in ("fp16", "fp32", "other")},
        training_step=int(model_meta.get("training_step", -1)),
    )
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(engine_path, plan)
    _write_atomic(
        engine_metadata_path(engine_path), (json.dumps(meta.to_dict(), indent=2) + "\n").encode()
    )
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(timing_cache, cache_bytes)
    log.info(
        "wrote %s (%d fp16 and %d fp32 layers, profile max %s) and the timing cache %s",
        engine_path,
        summary["fp16"],
        summary["fp32"],
        profile.max,
        timing_cache,
    )
    return engine_path, meta


# ---------------------------------------------------------------------------------
# Command line


def engine_options(command):
    """Add the engine build options to a click command (shared with fmsr-export)."""
    options = [
        click.option(
            "--gpu-mem",
            type=click.FloatRange(min=0.5),
            default=DEFAULT_GPU_MEM_GIB,
            show_default=True,
            help="GPU memory budget in GiB for the engine and the loop (default: a 4 GB RTX 2050).",
        ),
        click.option(
            "--gpu-reserve",
            type=click.FloatRange(min=0.0),
            default=DEFAULT_RESERVE_GIB,
            show_default=True,
            help="GiB of the budget kept for the display, the CUDA context and the "
            "whole-image buffers.",
        ),
        click.option(
            "--workspace",
            type=click.FloatRange(min=16),
            default=DEFAULT_WORKSPACE_MIB,
            show_default=True,
            help="TensorRT workspace pool limit in MiB.",
        ),
        click.option(
            "--opt-level",
            type=click.IntRange(0, 5),
            default=DEFAULT_OPT_LEVEL,
            show_default=True,
            help="TensorRT builder optimization level (higher builds longer, may run faster).",
        ),
        click.option(
            "--max-tile",
            type=click.IntRange(MIN_TILE, 4096),
            default=MAX_TILE,
            show_default=True,
            help="Largest tile side in output pixels that the profile may choose.",
        ),
        click.option(
            "--max-batch",
            type=click.IntRange(1, 64),
            default=MAX_BATCH,
            show_default=True,
            help="Maximum tiles per engine call that the profile may choose.",
        ),
        click.option(
            "--timing-cache",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"Timing cache file, read and updated by each build. Default: {TIMING_CACHE_NAME} "
            "beside the engine.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "onnx_path",
    metavar="MODEL_FP16_ONNX",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--engine",
    "engine_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Engine file to write. Default: the model path with .engine.",
)
@engine_options
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
def main(
    onnx_path,
    engine_path,
    gpu_mem,
    gpu_reserve,
    workspace,
    opt_level,
    max_tile,
    max_batch,
    timing_cache,
    quiet,
):
    """Build the fp16 TensorRT engine of MODEL_FP16_ONNX on this machine's GPU."""
    import sys

    from fmsr_infer.model_info import ModelError

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        budget = MemoryBudget.from_gib(gpu_mem, gpu_reserve, workspace)
        path, meta = build_engine(
            onnx_path,
            engine_path,
            budget,
            opt_level,
            timing_cache,
            max_tile=max_tile,
            max_batch=max_batch,
        )
    except (EngineBuildError, ModelError, ValueError, OSError) as exc:
        click.echo(f"fmsr_export.trt_build: error: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"wrote {path} (TensorRT {meta.tensorrt_version}, {meta.gpu_name}, "
        f"profile max {meta.profile['max']})"
    )


if __name__ == "__main__":
    main()
