"""`fmsr-bench`: time the fmsr runtime against PyTorch eager, side by side in one run.

Writes benchmarks/results/<host>-<date>.json (every measurement), .md (the tables) and
.png (latency against output megapixels, one line per backend).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("benchmarks")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FULL = {"sizes": (32, 64, 128, 256), "steps": (1, 4, 8), "repeats": 10, "peak_size": 4096,
        "peak_repeats": 5, "network_min_seconds": 2.0}
QUICK = {"sizes": (16, 32), "steps": (1, 2), "repeats": 3, "peak_size": 2048,
         "peak_repeats": 3, "network_min_seconds": 0.0}
NETWORK_MAX_RUNS = 50
QUICK_SKIPS = {
    "torch-compile": "skipped by --quick: torch.compile takes tens of seconds per input "
    "size on a CPU; run without --quick to measure it",
}


def parse_ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint=name
        ) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=name)
    return values


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        memory_gb = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "host": socket.gethostname(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "memory_gb": memory_gb,
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def git_commit() -> tuple[str | None, bool | None]:
    """Return (HEAD commit, whether tracked files differ from it), or (None, None)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=root, capture_output=True, text=True, timeout=10,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head, bool(status.strip())


def measure_peaks(size: int, repeats: int) -> dict[str, Any]:
    import torch

    from benchmarks.measure import measure_peak_gflops

    peaks = {"cpu_fp32": measure_peak_gflops(size, repeats)}
    if torch.cuda.is_available():
        peaks["cuda_fp32"] = measure_peak_gflops(size, repeats, "cuda", torch.float32)
        peaks["cuda_fp16"] = measure_peak_gflops(size, repeats, "cuda", torch.float16)
    return peaks


def output_stem(host: str, started_utc: str, quick: bool) -> str:
    """Name a run's files <host>-<UTC date of its start>, plus -quick for --quick."""
    safe_host = re.sub(r"[^A-Za-z0-9._-]+", "_", host) or "host"
    return f"{safe_host}-{started_utc[:10]}" + ("-quick" if quick else "")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True,
              help="Smoke test in about a minute: LR 16 and 32, steps 1 and 2, 3 runs, no "
              "torch.compile. Not a measurement.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model from fmsr-export (its .json beside it). Default: a freshly "
              "initialised UNetSR with the default configuration, exported to a temporary file.")
@click.option("--ckpt", "ckpt_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint of --model, for the eager backends; alone, it is exported first.")
@click.option("--sizes", help="LR sides in pixels, comma-separated. [default: 32,64,128,256; "
              "--quick: 16,32]")
@click.option("--steps", "steps_text", help="Sampler intervals, comma-separated. [default: "
              "1,4,8; --quick: 1,2]")
@click.option("--samplers", default="euler,heun", show_default=True,
              help="Samplers, comma-separated.")
@click.option("--repeats", type=click.IntRange(1), default=None,
              help="Timed end-to-end runs per cell, and the minimum network calls per size. "
              "[default: 10; --quick: 3]")
@click.option("--cell-budget", type=click.FloatRange(min=0), default=90.0, show_default=True,
              help="Seconds: a backend skips an end-to-end cell whose estimated time for "
              "--repeats runs is longer (Euler 8 steps of eager-fp32 and fmsr-ort-cpu always run).")
@click.option("--backends", "backend_names",
              help="Backends to run, comma-separated; the others report 'not selected'. "
              "[default: all]")
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), default=1.0, show_default=True,
              help="Noise scale; above 0 the parity check also covers the noise field.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the input image, the noise and the fresh model.")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True,
              help="CPU threads for torch and ONNX Runtime; 0 = all cores.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak RSS per size in fresh processes.")
@click.option("--memory-tile", type=click.IntRange(4), default=128, show_default=True,
              help="Tile side in output pixels for the tiled memory rows.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True, help="Folder for the JSON, Markdown and PNG.")
@click.option("--doc", "doc_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the Markdown page here (for example docs/benchmarks.md).")
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
def main(quick, model_path, ckpt_path, sizes, steps_text, samplers, repeats, cell_budget,
         backend_names, temperature, seed, threads, memory, memory_tile, out_dir, doc_path,
         quiet):
    """Time PyTorch eager, its variants and the fmsr runtime on one model, in one process."""
    # fmsr's own progress at INFO; the exporter's libraries (onnxscript) log every
    # graph pass at INFO, so everything else is shown from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("benchmarks", "fmsr_infer", "fmsr_export", "fmsr_train"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    preset = QUICK if quick else FULL
    sizes = parse_ints(sizes, "--sizes") or preset["sizes"]
    steps = parse_ints(steps_text, "--steps") or preset["steps"]
    sampler_names = tuple(s.strip() for s in samplers.split(",") if s.strip())
    from fmsr_infer.samplers import SAMPLERS

    unknown = [s for s in sampler_names if s not in SAMPLERS]
    if unknown or not sampler_names:
        raise click.BadParameter(f"unknown samplers {unknown}; use {SAMPLERS}",
                                 param_hint="--samplers")
    repeats = repeats or preset["repeats"]
    threads = threads or os.cpu_count() or 1
    command = "fmsr-bench " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])

    results = run_benchmark(
        quick=quick, model_path=model_path, ckpt_path=ckpt_path, sizes=sizes, steps=steps,
        samplers=sampler_names, repeats=repeats, cell_budget=cell_budget,
        backend_names=backend_names, temperature=temperature, seed=seed, threads=threads,
        memory=memory, memory_tile=memory_tile, preset=preset, command=command,
    )
    write_outputs(results, out_dir, doc_path, quick)


def run_benchmark(*, quick, model_path, ckpt_path, sizes, steps, samplers, repeats,
                  cell_budget, backend_names, temperature, seed, threads, memory,
                  memory_tile, preset, command) -> dict[str, Any]:
    import torch

    from benchmarks import analysis
    from benchmarks.backends import build_backends
    from benchmarks.models import load_bench_model
    from benchmarks.runner import BenchConfig, Runner

    torch.set_num_threads(threads)
    started = time.time()
    machine = machine_info(threads)
    if machine["load_average_start"] > 0.5:
        log.warning("1-minute load average is %.2f at the start: other processes compete for "
                    "the CPU and will slow every row", machine["load_average_start"])

    with tempfile.TemporaryDirectory(prefix="fmsr-bench-") as work_dir:
        model = load_bench_model(model_path, ckpt_path, Path(work_dir), seed)
        scale, multiple = model.info.scale, model.info.size_multiple
        bad = [s for s in sizes if (s * scale) % multiple]
        if bad:
            raise click.BadParameter(f"LR sizes {bad} give outputs that are not multiples of "
                                     f"the model's size multiple {multiple}", param_hint="--sizes")
        skip = dict(QUICK_SKIPS) if quick else {}
        if backend_names:
            selected = {name.strip() for name in backend_names.split(",")}
            from benchmarks.backends import BASELINE

            selected.add(BASELINE)  # the reference of every speedup and parity check
            for backend in build_backends(model, threads, {}, steps):
                if backend.name not in selected:
                    skip.setdefault(backend.name, "not selected with --backends")
        backends = build_backends(model, threads, skip, steps)
        config = BenchConfig(
            sizes=sizes, steps=steps, samplers=samplers, repeats=repeats,
            network_min_runs=repeats, network_min_seconds=preset["network_min_seconds"],
            network_max_runs=NETWORK_MAX_RUNS, cell_budget_s=cell_budget, seed=seed,
            temperature=temperature, threads=threads,
            memory_sizes=sizes if memory else (), memory_tile=memory_tile,
        )

        log.info("peak matmul rate at the start")
        peaks_start = measure_peaks(preset["peak_size"], preset["peak_repeats"])
        results = Runner(config, model, backends).run()
        log.info("peak matmul rate at the end")
        peaks_end = measure_peaks(preset["peak_size"], preset["peak_repeats"])

    machine["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    peaks = {}
    for key, start in peaks_start.items():
        end = peaks_end[key]
        best = start if start["gflops"] >= end["gflops"] else end
        peaks[key] = {**best, "start_gflops": start["gflops"], "end_gflops": end["gflops"]}
    analysis.add_peak_fractions(results, peaks)
    analysis.add_speedups(results)
    results["targets"] = analysis.evaluate_targets(results, sizes)
    results["memory_fit"] = analysis.fit_memory(results["memory"])

    commit, dirty = git_commit()
    torch_model = model.torch_model
    results.update({
        "format": "fmsr-bench-1",
        "machine": machine,
        "peak": peaks["cpu_fp32"],
        "peaks": peaks,
        "model": {
            "source": model.source,
            "onnx": str(model_path) if model_path else None,
            "ckpt": str(ckpt_path) if ckpt_path else None,
            "onnx_sha256": model.info.onnx_sha256,
            "parameters": sum(p.numel() for p in torch_model.parameters()) if torch_model else 0,
            "model_config": model.info.model_config,
            "target": model.info.target,
            "prediction": model.info.prediction,
        },
        "run": {
            "command": command, "quick": quick,
            "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M"),
            "wall_s": time.time() - started,
            "git_commit": commit, "git_dirty": dirty,
            "sizes": list(sizes), "steps": list(steps), "samplers": list(samplers),
            "repeats": repeats, "network_min_runs": repeats,
            "network_min_seconds": preset["network_min_seconds"],
            "network_max_runs": NETWORK_MAX_RUNS, "cell_budget_s": cell_budget,
            "seed": seed, "temperature": temperature, "memory_tile": memory_tile,
        },
    })
    return results


DOC_BEGIN = "<!-- fmsr-bench: begin generated tables -->"
DOC_END = "<!-- fmsr-bench: end generated tables -->"


def write_doc(path: Path, markdown: str) -> None:
    """Write the tables into a page between DOC_BEGIN and DOC_END, keeping the rest.

    A page without the markers (or a new one) is replaced by the tables alone.
    """
    text = path.read_text() if path.is_file() else ""
    begin, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if begin < 0 or end < begin:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown)
        return
    # The generated page starts with its own H1; inside a page its sections move down one level.
    body = "\n".join(("#" + line if line.startswith("#") else line)
                     for line in markdown.splitlines())
    path.write_text(text[: begin + len(DOC_BEGIN)] + "\n" + body + "\n" + text[end:])


def write_outputs(results: dict[str, Any], out_dir: Path, doc_path: Path | None,
                  quick: bool) -> None:
    from benchmarks.report import render_markdown, write_json, write_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(results["machine"]["host"], results["run"]["started_utc"], quick)
    json_path, md_path, png_path = (out_dir / f"{stem}{ext}" for ext in (".json", ".md", ".png"))
    plot_error = write_plot(results, png_path)
    if plot_error:
        log.warning("no plot written: %s", plot_error)
    results["outputs"] = {"json": json_path.name, "markdown": md_path.name,
                          "plot": None if plot_error else png_path.name, "plot_error": plot_error}
    write_json(results, json_path)
    md_path.write_text(render_markdown(results, None if plot_error else png_path.name))
    written = [json_path, md_path] + ([] if plot_error else [png_path])
    if doc_path is not None:
        plot = None if plot_error else os.path.relpath(png_path, doc_path.parent)
        write_doc(doc_path, render_markdown(results, plot))
        written.append(doc_path)
    click.echo("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
