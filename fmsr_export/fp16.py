"""Mixed-precision (fp16) ONNX for TensorRT 11 and ONNX Runtime CUDA, and its accuracy check.

TensorRT 11 builds only strongly typed networks: `BuilderFlag.FP16` was removed in 11.0,
and each layer runs in the precision that the ONNX graph gives its tensors. So the fp16
engine is built from an fp16 graph, made here from the fp32 export with
onnxconverter-common's `float16.convert_float_to_float16`:

- Graph inputs and outputs stay float32 (`keep_io_types=True`), so every backend feeds
  and reads the same arrays; Cast nodes convert at the graph's edges.
- The time path stays float32: every node computed from `t` alone (the sinusoidal
  embedding of 1000·t, the time MLP and each block's time-bias projection). fp16 has
  11 significant bits, so angles near 1000 would be rounded to 0.5 and the cosines
  would be noise.
- Op types that overflow or lose range in fp16 (`FP32_OP_TYPES`: normalizations, large
  reductions, exp/log/pow, softmax, sin/cos) stay float32 wherever they occur.

The converter casts each kept node separately, so a chain of kept nodes goes through
fp16 between them, and it stores their weights in fp16 with a Cast back to fp32
(onnxconverter-common 1.16). Two passes here undo both, and `check_fp32_region`
verifies that no kept node reads a value that went through fp16.

The check runs both graphs with ONNX Runtime's CPU execution provider on real photos.
It reports the max abs error of one network call, over the inputs of the fp32 run, and
the PSNR between the fp32 and fp16 images after the whole sampler run (the model's
recommended sampler, steps, time grid and temperature by default). ONNX Runtime's CPU provider computes most fp16 ops by casting to fp32 and back, so this
measures fp16 storage of weights and activations, not the accumulation order of
TensorRT's fp16 kernels.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fmsr_infer.model_info import ModelInfo, metadata_path, sha256_file

log = logging.getLogger(__name__)

FP16_SUFFIX = "_fp16"
TIME_INPUT = "t"
DEFAULT_MIN_PSNR_DB = 45.0
DEFAULT_CHECK_CROP = 64

# Op types kept in float32 wherever they occur, besides the time path. None occurs in
# UNetSR today; the list guards later architectures.
FP32_OP_TYPES = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Sin",
    "Cos",
)

# The smallest positive subnormal and the largest finite fp16 values. Weights beyond
# them are clamped by the converter (it warns once per value); we count and log them.
_FP16_MIN_POSITIVE = 5.96e-08
_FP16_MAX_FINITE = 65504.0
_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class Fp16Error(RuntimeError):
    """The fp16 conversion or its accuracy check failed; the message names the step."""


def fp16_model_path(fp32_path: str | Path) -> Path:
    """Return where the fp16 model of an fp32 ONNX file goes: `<stem>_fp16.onnx`."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(fp32_path.stem + FP16_SUFFIX + ".onnx")


# ---------------------------------------------------------------------------------
# Conversion


def name_unnamed_nodes(graph) -> int:
    """Give every unnamed node a unique name, since the converter keys nodes by name.

    Returns the number of nodes named.
    """
    used_names = {node.name for node in graph.node if node.name}
    named = 0
    for index, node in enumerate(graph.node):
        if node.name:
            continue
        candidate = f"{node.op_type}_{index}"
        while candidate in used_names:
            candidate += "_"
        node.name = candidate
        used_names.add(candidate)
        named += 1
    return named


def time_path_nodes(graph, time_input: str = TIME_INPUT) -> list[str]:
    """Return the names of the nodes computed from `time_input` and constants alone.

    The graph must be topologically sorted, as the ONNX checker requires.
    """
    constants = {init.name for init in graph.initializer}
    derived = {time_input}
    names = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if not inputs:
            # A Constant node: its output is a constant for this analysis.
            constants.update(node.output)
            continue
        if any(name in derived for name in inputs) and all(
            name in derived or name in constants for name in inputs
        ):
            names.append(node.name)
            derived.update(node.output)
    return names


def _producers(graph) -> dict[str, object]:
    return {output: node for node in graph.node for output in node.output}


def _cast_target(node) -> int | None:
    if node.op_type != "Cast":
        return None
    for attribute in node.attribute:
        if attribute.name == "to":
            return attribute.i
    return None


def _rename_input(graph, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _remove_cast_round_trips(graph) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs, so kept nodes read the fp32 value.

    Returns the number of Cast-to-fp32 nodes removed.
    """
    producers = _producers(graph)
    graph_outputs = {output.name for output in graph.output}
    removed = []
    for node in graph.node:
        if _cast_target(node) != _FLOAT:
            continue
        upstream = producers.get(node.input[0])
        if upstream is None or _cast_target(upstream) != _FLOAT16:
            continue
        if node.output[0] in graph_outputs:
            continue
        # Cast(fp32)(Cast(fp16)(a)) becomes a: readers of this output read a.
        _rename_input(graph, node.output[0], upstream.input[0])
        removed.append(node)
    for node in removed:
        graph.node.remove(node)

    # A Cast to fp16 that no node reads any more goes too.
    read = {name for node in graph.node for name in node.input} | graph_outputs
    orphans = [n for n in graph.node if _cast_target(n) == _FLOAT16 and n.output[0] not in read]
    for node in orphans:
        graph.node.remove(node)
    return len(removed)


def _restore_fp32_initializers(graph, original_initializers: dict) -> int:
    """Replace Cast-to-fp32 of an fp16-stored weight by the original fp32 weight.

    Returns the number of weights restored.
    """
    from onnx import numpy_helper

    converted = {init.name: init for init in graph.initializer}
    removed = []
    for node in graph.node:
        if _cast_target(node) != _FLOAT:
            continue
        source = node.input[0]
        init = converted.get(source)
        original = original_initializers.get(source)
        if init is None or original is None or init.data_type != _FLOAT16:
            continue
        if original.data_type != _FLOAT:
            continue
        restored_name = f"{source}_fp32"
        if restored_name not in converted:
            restored = numpy_helper.from_array(numpy_helper.to_array(original), restored_name)
            graph.initializer.append(restored)
            converted[restored_name] = restored
        _rename_input(graph, node.output[0], restored_name)
        removed.append(node)
    for node in removed:
        graph.node.remove(node)

    # The fp16 copies that only those Casts read are dropped.
    read = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in read]
    for init in unused:
        graph.initializer.remove(init)
    return len(removed)


def check_fp32_region(model, time_nodes: list[str]) -> None:
    """Raise Fp16Error if a node of the time path reads a value that went through fp16.

    Each input of a time-path node must be a graph input, an fp32 weight or the output
    of another time-path node. A Cast to fp32 in front of one means the value was
    rounded to fp16 on the way.
    """
    graph = model.graph
    time_path = set(time_nodes)
    producers = _producers(graph)
    initializers = {init.name: init.data_type for init in graph.initializer}
    inputs = {value.name: value.type.tensor_type.elem_type for value in graph.input}
    problems = []
    for node in graph.node:
        if node.name not in time_path:
            continue
        for name in node.input:
            if not name:
                continue
            if name in initializers:
                if initializers[name] == _FLOAT16:
                    problems.append(f"{node.name} reads the fp16 weight {name}")
                continue
            if name in inputs:
                if inputs[name] == _FLOAT16:
                    problems.append(f"{node.name} reads the fp16 graph input {name}")
                continue
            producer = producers.get(name)
            if producer is None or producer.name in time_path:
                continue
            if producer.op_type == "Constant":
                continue
            if _cast_target(producer) == _FLOAT:
                upstream = producers.get(producer.input[0])
                source_type = initializers.get(producer.input[0])
                if source_type == _FLOAT16 or upstream is not None:
                    problems.append(
                        f"{node.name} reads {name}, an fp32 Cast of the fp16 value "
                        f"{producer.input[0]}"
                    )
    if problems:
        raise Fp16Error(
            "the fp16 graph rounds values of the fp32 region to fp16: "
            + "; ".join(problems[:10])
            + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        )


_TRUNCATION = re.compile(r"truncated to (\S+)")


def _count_clamped(caught) -> tuple[int, int]:
    """Count the converter's clamping warnings: (tiny values raised, large values lowered).

    onnxconverter-common warns "the float32 number X will be truncated to Y" for
    each weight outside fp16's range.
    """
    underflows = overflows = 0
    for warning in caught:
        match = _TRUNCATION.search(str(warning.message))
        if not match:
            continue
        try:
            target = abs(float(match.group(1)))
        except ValueError:
            continue
        if target >= _FP16_MAX_FINITE:
            overflows += 1
        else:
            underflows += 1
    return underflows, overflows


@dataclass
class Fp16Conversion:
    """Report of a conversion: the nodes kept in fp32 and the counts of repairs."""

    kept_fp32_nodes: list[str]
    clamped_weights: int
    round_trips_removed: int
    weights_restored: int


def convert_to_fp16(model) -> tuple[object, Fp16Conversion]:
    """Convert an fp32 ONNX model to mixed precision; returns (new model, report).

    The input model is not modified. Raises Fp16Error when the fp32 region is not kept.
    """
    import onnx
    from onnxconverter_common import float16

    model = copy.deepcopy(model)
    name_unnamed_nodes(model.graph)
    if TIME_INPUT not in {value.name for value in model.graph.input}:
        raise Fp16Error(f"the model has no input {TIME_INPUT!r}; it is not an fmsr export")
    time_nodes = time_path_nodes(model.graph)
    op_block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OP_TYPES))
    fp32_nodes = sorted(
        set(time_nodes) | {node.name for node in model.graph.node if node.op_type in op_block_list}
    )
    original_initializers = {init.name: init for init in model.graph.initializer}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            model,
            min_positive_val=_FP16_MIN_POSITIVE,
            max_finite_val=_FP16_MAX_FINITE,
            keep_io_types=True,
            op_block_list=op_block_list,
            node_block_list=time_nodes,
        )
    underflows, overflows = _count_clamped(caught)

    round_trips = _remove_cast_round_trips(converted.graph)
    restored = _restore_fp32_initializers(converted.graph, original_initializers)
    check_fp32_region(converted, time_nodes)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise Fp16Error(f"the fp16 graph fails the ONNX checker: {exc}") from exc
    if overflows:
        log.warning(
            "%d weights exceed fp16's largest value %.0f and were clamped to it",
            overflows,
            _FP16_MAX_FINITE,
        )
    if underflows:
        log.info(
            "%d nonzero weights are smaller than fp16's smallest subnormal %.3g and were "
            "rounded to it",
            underflows,
            _FP16_MIN_POSITIVE,
        )
    report = Fp16Conversion(fp32_nodes, underflows + overflows, round_trips, restored)
    log.info(
        "fp16 graph: %d nodes kept in fp32 (%d on the time path), %d Cast round trips "
        "removed, %d fp32 weights restored",
        len(fp32_nodes),
        len(time_nodes),
        round_trips,
        restored,
    )
    return converted, report


# ---------------------------------------------------------------------------------
# Accuracy check


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Return the central size x size crop of an [H, W, C] image (smaller sides stay)."""
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def load_check_images(folder: str | Path | None, crop: int = DEFAULT_CHECK_CROP) -> dict:
    """Load the LR photos of the check: {name: [crop, crop, 3] float32 in [0, 1]}.

    From `folder` (every image file in it), or scikit-image's sample photos when
    `folder` is None. Raises Fp16Error when neither yields an image.
    """
    arrays: dict[str, np.ndarray] = {}
    if folder is not None:
        from PIL import Image

        folder = Path(folder)
        if not folder.is_dir():
            raise Fp16Error(f"check image folder not found: {folder}")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in _IMAGE_EXTENSIONS:
                with Image.open(path) as img:
                    arrays[path.stem] = np.asarray(img.convert("RGB"))
        if not arrays:
            raise Fp16Error(f"no images ({', '.join(_IMAGE_EXTENSIONS)}) in {folder}")
    else:
        try:
            from skimage import data
        except ImportError as exc:
            raise Fp16Error(
                "the fp16 check needs photos: pass a folder of images (fmsr-export "
                "--check-images DIR) or install scikit-image, whose sample photos are "
                "the default"
            ) from exc
        arrays = {
            "astronaut": data.astronaut(),
            "coffee": data.coffee(),
            "chelsea": data.chelsea(),
            "rocket": data.rocket(),
        }
    return {
        name: center_crop(image, crop).astype(np.float32) / 255.0 for name, image in arrays.items()
    }


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1], peak 1, all pixels and channels; inf if equal."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(1.0 / mse)


class _PairedBackend:
    """Run the reference network and, on the same inputs, the candidate; return the reference.

    Keeps the max abs difference of the two outputs over all calls.
    """

    def __init__(self, reference, candidate):
        self.reference = reference
        self.candidate = candidate
        self.max_abs_error = 0.0
        self.calls = 0

    def __call__(self, x_t, cond, t):
        expected = self.reference(x_t, cond, t)
        actual = self.candidate(x_t, cond, t)
        error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
        self.max_abs_error = max(self.max_abs_error, error)
        self.calls += 1
        return expected


@dataclass
class Fp16Accuracy:
    """Accuracy of the fp16 model against the fp32 one, both in ONNX Runtime on the CPU.

    `max_abs_error` is in the network's output units (velocity or x_1), over every
    call of the fp32 runs. `psnr_db` compares the final images in [0, 1], per photo.
    """

    max_abs_error: float
    psnr_db: dict[str, float]
    min_psnr_db: float
    steps: int
    sampler: str
    temperature: float
    crop: int
    network_calls: int
    provider: str = "CPUExecutionProvider"

    def to_dict(self) -> dict:
        data = asdict(self)
        # JSON has no infinity; identical images are reported as null.
        data["psnr_db"] = {k: (None if math.isinf(v) else v) for k, v in self.psnr_db.items()}
        data["min_psnr_db"] = None if math.isinf(self.min_psnr_db) else self.min_psnr_db
        return data


def check_accuracy(
    fp32_path: str | Path,
    fp16_path: str | Path,
    info: ModelInfo,
    images: dict,
    steps: int | None = None,
    threads: int = 0,
) -> Fp16Accuracy:
    """Compare the fp16 model with the fp32 one on LR photos (see the module docstring).

    Uses the model's recommended sampler, time grid and temperature, seed 0, and its
    recommended steps unless `steps` is given.
    """
    from fmsr_infer.backend_ort import OrtBackend
    from fmsr_infer.pipeline import SampleSettings, Upscaler

    reference = OrtBackend(fp32_path, info, threads=threads)
    candidate = OrtBackend(fp16_path, info, threads=threads)
    paired = _PairedBackend(reference, candidate)
    settings = SampleSettings(
        steps=info.steps_default if steps is None else steps,
        sampler=info.sampler_default,
        seed=0,
        temperature=info.temperature_default,
        grid=info.grid_default,
        shift=info.shift_default,
    )
    scores = {}
    crop = 0
    for name, lr in images.items():
        crop = max(crop, *lr.shape[:2])
        expected = Upscaler(paired, info).upscale(lr, settings).image
        actual = Upscaler(candidate, info).upscale(lr, settings).image
        scores[name] = psnr_db(expected, actual)
        log.info("fp16 vs fp32 on %s: PSNR %.2f dB", name, scores[name])
    if not scores:
        raise Fp16Error("the fp16 check got no images")
    return Fp16Accuracy(
        max_abs_error=paired.max_abs_error,
        psnr_db=scores,
        min_psnr_db=min(scores.values()),
        steps=settings.steps,
        sampler=settings.sampler,
        temperature=settings.temperature,
        crop=crop,
        network_calls=paired.calls,
    )


# ---------------------------------------------------------------------------------
# Export


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_fp16(
    fp32_path: str | Path,
    info: ModelInfo,
    images: dict,
    out_path: str | Path | None = None,
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB,
    steps: int | None = None,
    threads: int = 0,
) -> tuple[Path, dict, Fp16Accuracy]:
    """Write the fp16 model of an fp32 export, with its JSON, after checking it.

    Returns (fp16 path, metadata dict, accuracy). Raises Fp16Error, leaving no file
    behind, when the conversion fails or the PSNR of a photo is below `min_psnr_db`.
    The JSON is the fp32 model's with precision "fp16", the fp16 file's sha256,
    `parity_max_abs_error` set to the one-call error against the fp32 model, and
    `source_onnx_sha256`, `fp16_check` and `fp32_nodes` added.
    """
    import onnx

    fp32_path = Path(fp32_path)
    out_path = Path(out_path) if out_path else fp16_model_path(fp32_path)
    converted, report = convert_to_fp16(onnx.load(str(fp32_path)))
    out_path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_onnx = Path(tmp) / "model_fp16.onnx"
        onnx.save(converted, str(tmp_onnx))
        accuracy = check_accuracy(fp32_path, tmp_onnx, info, images, steps=steps, threads=threads)
        log.info(
            "fp16 vs fp32: max abs error of one call %.2e, min PSNR of %d-step images %.2f dB",
            accuracy.max_abs_error,
            accuracy.steps,
            accuracy.min_psnr_db,
        )
        if not accuracy.min_psnr_db >= min_psnr_db:
            worst = min(accuracy.psnr_db, key=accuracy.psnr_db.get)
            raise Fp16Error(
                f"the fp16 model reaches only {accuracy.min_psnr_db:.2f} dB PSNR against "
                f"fp32 on {worst!r} (required {min_psnr_db:.1f} dB); keep more ops in fp32 "
                "(FP32_OP_TYPES in fmsr_export/fp16.py) or use the fp32 model"
            )

        meta = info.to_dict()
        meta.update(
            precision="fp16",
            onnx_sha256=sha256_file(tmp_onnx),
            parity_max_abs_error=accuracy.max_abs_error,
            source_onnx_sha256=sha256_file(fp32_path),
            fp16_check=accuracy.to_dict(),
            fp32_nodes=report.kept_fp32_nodes,
        )
        _write_atomic(out_path, lambda p: os.replace(tmp_onnx, p))
        meta_path = metadata_path(out_path)
        _write_atomic(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    log.info("wrote %s and %s", out_path, meta_path)
    return out_path, meta, accuracy


# ---------------------------------------------------------------------------------
# Command line


def _command():
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument(
        "model_path",
        metavar="MODEL_ONNX",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
    )
    @click.option(
        "--out",
        "out_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="fp16 ONNX file to write. Default: <model>_fp16.onnx beside the model.",
    )
    @click.option(
        "--check-images",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Folder of photos for the check (their central 64x64 crops are the LR inputs). "
        "Default: scikit-image's sample photos.",
    )
    @click.option(
        "--min-fp16-psnr",
        type=float,
        default=DEFAULT_MIN_PSNR_DB,
        show_default=True,
        help="Lowest PSNR in dB between the fp32 and fp16 images (the model's recommended "
        "sampler and steps) that the check accepts.",
    )
    @click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
    def main(model_path, out_path, check_images, min_fp16_psnr, quiet):
        """Write and check the fp16 model of an fp32 ONNX export (MODEL_ONNX and its .json).

        Needs no checkpoint and no torch, so it also converts the bundled default model.
        """
        import sys

        from fmsr_infer.model_info import ModelError, load_info

        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
        )
        try:
            info = load_info(model_path)
            images = load_check_images(check_images)
            path, _, accuracy = export_fp16(
                model_path, info, images, out_path=out_path, min_psnr_db=min_fp16_psnr
            )
        except (Fp16Error, ModelError, OSError) as exc:
            click.echo(f"fmsr_export.fp16: error: {exc}", err=True)
            sys.exit(1)
        click.echo(
            f"wrote {path} (fp16 vs fp32 on {len(images)} photos, ONNX Runtime CPU: max abs "
            f"error of one call {accuracy.max_abs_error:.2e}, min PSNR of the {accuracy.steps}-step "
            f"images {accuracy.min_psnr_db:.2f} dB)"
        )

    return main


if __name__ == "__main__":
    _command()()
