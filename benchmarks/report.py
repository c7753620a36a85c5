"""Write a run's results: JSON (everything), a Markdown page and a PNG plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from benchmarks.analysis import find
from benchmarks.backends import BASELINE, RUNTIME_CPU
from benchmarks.runner import PARITY_MIN_PSNR_DB

log = logging.getLogger(__name__)


def _plain(value):
    """Turn non-finite floats into None and tuples into lists, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_plain(results), indent=1, allow_nan=False) + "\n")


# ---- Markdown -------------------------------------------------------------------------


class Footnotes:
    """Numbered reasons for cells that did not run, so the tables stay narrow."""

    def __init__(self):
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"n/a [{self.reasons.index(reason) + 1}]"

    def render(self) -> list[str]:
        return [f"[{i}] {reason}  " for i, reason in enumerate(self.reasons, 1)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def _header(results: dict[str, Any]) -> list[str]:
    machine, run, model, peak = (results[k] for k in ("machine", "run", "model", "peak"))
    lines = [
        "# Benchmarks: the fmsr runtime against PyTorch eager",
        "",
        f"Command: `{run['command']}`  ",
        (f"Hardware: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']:.0f} GB RAM"
        f"; GPU: {machine['gpu'] or 'none'}  "),
        (f"Software: Python {machine['python']}, torch {machine['torch']}, onnxruntime "
        f"{machine['onnxruntime']}, numpy {machine['numpy']}; {machine['threads']} threads  "),
        (f"Run: {run['started_utc']} UTC, {run['wall_s'] / 60:.1f} min, commit "
        f"{run['git_commit'] or 'unknown'}, 1-minute load average "
        f"{machine['load_average_start']:.2f} at the start and "
        f"{machine.get('load_average_end', float('nan')):.2f} at the end  "),
        (f"Model: {model['source']}, {model['parameters'] / 1e6:.2f} M parameters, target "
        f"{model['target']}, prediction {model['prediction']}  "),
        (f"Peak: {peak['operation']} at {peak['gflops']:.1f} GFLOP/s (best run; "
        f"{peak['start_gflops']:.1f} at the start of the run, {peak['end_gflops']:.1f} at "
        "the end)"),
        "",
        (f"Each timing is the median and p90 of {run['repeats']} end-to-end runs (network: at "
        f"least {run['network_min_runs']} calls and {run['network_min_seconds']:g} s) after "
        "warm-up. End to end is a uint8 LR image in memory to the uint8 output: "
        "conditioning, noise, the sampler's network calls and updates, rounding. All "
        f"backends run the same weights on the same input (benchmarks/images.py, seed "
        f"{run['seed']}, temperature {run['temperature']:g}). Cells whose estimated time "
        f"exceeds {run['cell_budget_s']:.0f} s are skipped, except Euler 8 steps for "
        f"{BASELINE} and {RUNTIME_CPU}."),
    ]
    if run.get("quick"):
        lines += ["", "**--quick run: a smoke test with few runs; not a measurement.**"]
    return lines


def _backends_table(results) -> list[str]:
    rows = []
    for entry in results["backends"]:
        notes = entry.get("reason") or ""
        details = entry.get("details") or {}
        if details.get("compile_s"):
            compile_s = ", ".join(f"{k}: {v:.0f} s" for k, v in details["compile_s"].items())
            notes = f"compile time per output size: {compile_s}"
        if details.get("providers"):
            notes = (f"providers {details['providers']}, intra-op threads "
                     f"{details.get('intra_op_num_threads')}")
        if details.get("session_build_s") is not None:
            notes = (f"{details['sessions']} sessions, built in "
                     f"{details['session_build_s']:.1f} s before timing")
        rows.append([entry["name"], entry["description"], entry["status"], notes])
    return ["## Backends", ""] + _table(["backend", "what", "status", "notes"], rows)


def _ok_backends(results) -> list[str]:
    return [b["name"] for b in results["backends"] if b["status"] in ("ok", "failed")
            and any(r["backend"] == b["name"] for r in results["network"])]


def _network_tables(results, notes: Footnotes) -> list[str]:
    names = _ok_backends(results)
    sizes = sorted({r["lr_size"] for r in results["network"]})
    latency, rate = [], []
    for lr_size in sizes:
        row = find(results["network"], lr_size=lr_size, status="ok") or {}
        size_cells = [f"{lr_size}²", f"{lr_size * 4}²",
                      f"{row['flops'] / 1e9:.1f}" if row.get("flops") else "?"]
        lat_cells, rate_cells = list(size_cells), list(size_cells)
        for name in names:
            cell = find(results["network"], backend=name, lr_size=lr_size)
            if cell is None or cell["status"] != "ok":
                mark = notes.mark(cell["reason"] if cell else "not run")
                lat_cells.append(mark)
                rate_cells.append(mark)
                continue
            speedup = cell.get("speedup_vs_eager")
            lat_cells.append(f"{_ms(cell['median_s'])} / {_ms(cell['p90_s'])}"
                             + (f" ({speedup:.2f}x)" if speedup and name != BASELINE else ""))
            rate_cells.append(f"{cell['gflops']:.1f} ({cell['fraction_of_peak'] * 100:.0f}%)")
        latency.append(lat_cells)
        rate.append(rate_cells)
    header = ["LR", "output", "GFLOP"] + names
    return (
        ["## Network, one call at batch 1", "",
         "Median / p90 in ms, (speedup over eager-fp32):", ""]
        + _table(header, latency)
        + ["", ("Achieved GFLOP/s (share of the measured matmul peak); FLOPs counted by "
           "torch.utils.flop_counter from the convolutions and matrix products:"), ""]
        + _table(header, rate)
    )


def _e2e_table(results, notes: Footnotes) -> list[str]:
    names = _ok_backends(results)
    keys = sorted({(r["lr_size"], r["sampler"], r["steps"], r["network_calls"])
                   for r in results["end_to_end"]})
    rows = []
    for lr_size, sampler, steps, calls in keys:
        cells = [f"{lr_size}²", sampler, str(steps), str(calls)]
        ratio = "—"
        for name in names:
            cell = find(results["end_to_end"], backend=name, lr_size=lr_size,
                        sampler=sampler, steps=steps)
            if cell is None or cell["status"] != "ok":
                cells.append(notes.mark(cell["reason"] if cell else "not run"))
                continue
            speedup = cell.get("speedup_vs_eager")
            flag = " ⚠" if cell.get("parity_ok") is False else ""
            cells.append(f"{_s(cell['median_s'])} / {_s(cell['p90_s'])}"
                         + (f" ({speedup:.2f}x)" if speedup and name != BASELINE else "") + flag)
            if name == RUNTIME_CPU and cell.get("e2e_over_network"):
                ratio = f"{cell['e2e_over_network']:.3f}"
        rows.append(cells + [ratio])
    header = ["LR", "sampler", "steps", "calls"] + names + [f"{RUNTIME_CPU} e2e / network"]
    return (
        ["## End to end", "",
         ("Median / p90 in s, (speedup over eager-fp32); ⚠ marks output that differs from "
         f"eager-fp32 by less than {PARITY_MIN_PSNR_DB:.0f} dB PSNR. The last column is the "
         "runtime's end-to-end time over the time of its network calls in the same runs."), ""]
        + _table(header, rows)
    )


def _parity_table(results) -> list[str]:
    rows = []
    for name in _ok_backends(results):
        if name == BASELINE:
            continue
        cells = [r for r in results["end_to_end"] if r["backend"] == name
                 and ("psnr_vs_eager_db" in r or r.get("identical_to_eager"))]
        psnrs = [math.inf if r.get("identical_to_eager") else r["psnr_vs_eager_db"] for r in cells]
        flagged = [f"LR {r['lr_size']} {r['sampler']} {r['steps']}" for r in cells
                   if r.get("parity_ok") is False]
        errors = [r["max_abs_error_vs_eager"] for r in results["network"]
                  if r["backend"] == name and "max_abs_error_vs_eager" in r]
        worst = "—"
        if psnrs:
            worst = "identical" if min(psnrs) == math.inf else f"{min(psnrs):.1f}"
        rows.append([
            name, str(len(cells)), worst, ", ".join(flagged) or "none",
            f"{max(errors):.2e}" if errors else "—",
        ])
    return (["## Parity with eager-fp32", "",
             ("PSNR of the uint8 outputs over all channels, on the same seed; a network call "
             "compared on the same inputs."), ""]
            + _table(["backend", "e2e cells compared", "min PSNR (dB)",
                      f"flagged (< {PARITY_MIN_PSNR_DB:.0f} dB)",
                      "network max abs error"], rows))


def _memory_tables(results, notes: Footnotes) -> list[str]:
    if not results["memory"]:
        return []
    series = sorted({(r["backend"], r["kind"], r["tile"]) for r in results["memory"]},
                    key=lambda s: (s[1], s[2]))
    sizes = sorted({r["lr_size"] for r in results["memory"]})
    rows = []
    for lr_size in sizes:
        cells = [f"{lr_size}²", f"{(lr_size * 4) ** 2 / 1e6:.3f}"]
        for backend, kind, tile in series:
            cell = find(results["memory"], backend=backend, kind=kind, tile=tile, lr_size=lr_size)
            if cell is None or cell["status"] != "ok":
                cells.append(notes.mark(cell["reason"] if cell else "not run"))
            else:
                cells.append(f"{cell['run_peak_mb']:.0f} (+{cell['growth_mb']:.0f})")
        rows.append(cells)
    header = ["LR", "output MP"] + [
        f"{backend}, {'tile ' + str(tile) if tile else 'untiled'}" for backend, _, tile in series
    ]
    lines = ["## Memory", "",
             ("Peak RSS in MB of one Euler 1-step run, each in a fresh process "
             "(benchmarks/memory_probe.py), (in brackets: growth over the RSS after loading "
             "the model). The tile is in output pixels, with the pipeline's default overlap."),
             ""] + _table(header, rows) + [""]
    for fit in results.get("memory_fit", []):
        label = f"{fit['kind']}, {'tile ' + str(fit['tile']) if fit['tile'] else 'untiled'}"
        if "slope_mb_per_mp" in fit:
            lines.append(f"- {label}: growth = {fit['intercept_mb']:.0f} MB + "
                         f"{fit['slope_mb_per_mp']:.0f} MB per output megapixel "
                         f"(r² {fit['r2']:.3f}); {fit['min_growth_mb']:.0f} to "
                         f"{fit['max_growth_mb']:.0f} MB over the sizes.")
    if results["gpu_memory"]:
        lines += ["", "Peak allocated on the GPU (torch.cuda.max_memory_allocated), MB:", ""]
        lines += _table(["backend", "LR", "MB"], [
            [r["backend"], f"{r['lr_size']}²", f"{r['peak_allocated_mb']:.0f}"]
            for r in results["gpu_memory"]])
    return lines


def _targets_table(results) -> list[str]:
    rows = []
    for target in results["targets"]:
        value, threshold, name = target["value"], target["threshold"], target["target"]
        if "peak" in name:
            measured = "—" if value is None else f"{value * 100:.0f}%"
            expected = f"≥ {threshold * 100:.0f}%"
        elif "speedup" in name:
            measured = "—" if value is None else f"{value:.2f}x"
            expected = f"≥ {threshold:.2f}x"
        else:
            measured = "—" if value is None else f"{value:.3f}"
            expected = f"≤ {threshold:.2f}"
        met = {True: "yes", False: "no", None: target["reason"]}[target["met"]]
        rows.append([name, f"{target['lr_size']}²", measured, expected, met])
    return ["## Targets", ""] + _table(["target", "LR", "measured", "wanted", "met"], rows)


def render_markdown(results: dict[str, Any], plot_name: str | None) -> str:
    notes = Footnotes()
    sections = [
        _header(results),
        _targets_table(results),
        _backends_table(results),
        _network_tables(results, notes),
        _e2e_table(results, notes),
        _parity_table(results),
        _memory_tables(results, notes),
    ]
    if plot_name:
        sections.append(["## Plot", "", f"![latency against output megapixels]({plot_name})"])
    if notes.reasons:
        sections.append(["## Why cells did not run", ""] + notes.render())
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"


# ---- PNG ------------------------------------------------------------------------------


def write_plot(results: dict[str, Any], path: Path) -> str | None:
    """Plot latency against output megapixels, one line per backend.

    Returns None on success, or the reason no plot was written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed ({exc})"

    e2e_ok = [r for r in results["end_to_end"] if r["status"] == "ok" and r["sampler"] == "euler"]
    steps = max((r["steps"] for r in e2e_ok), default=None)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [
        (axes[0], [r for r in results["network"] if r["status"] == "ok"], 1e3,
         "one network call (ms)"),
        (axes[1], [r for r in e2e_ok if r["steps"] == steps], 1.0,
         f"end to end, Euler {steps} steps (s)"),
    ]
    for axis, rows, unit, title in panels:
        for name in _ok_backends(results):
            points = sorted((r["out_mp"], r["median_s"] * unit) for r in rows
                            if r["backend"] == name)
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("output megapixels")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{results['machine']['cpu']}, {results['machine']['threads']} threads "
                    "(median of the timed runs)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
