"""Derived figures: speedups, the targets, and how memory grows with the output size."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.backends import BASELINE, RUNTIME_CPU

# The runtime's targets on a 2-core CPU, for fmsr-bench to report (not to enforce).
SPEEDUP_TARGETS = {64: 1.15, 128: 1.5, 256: 1.5}  # runtime vs eager, Euler 8 steps
PEAK_FRACTION_TARGET = 0.85  # network GFLOP/s over the matmul peak, LR 64 and larger
E2E_OVER_NETWORK_TARGET = 1.05  # end-to-end time over the time of its network calls
TARGET_MIN_LR = 64


def find(rows: list[dict], **match) -> dict | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def add_speedups(results: dict[str, Any]) -> None:
    """Add `speedup_vs_eager` (eager median over the row's median) to the ok rows."""
    for table, keys in (("network", ("lr_size",)), ("end_to_end", ("lr_size", "sampler", "steps"))):
        for row in results[table]:
            if row.get("status") != "ok":
                continue
            base = find(results[table], backend=BASELINE, status="ok",
                        **{key: row[key] for key in keys})
            if base is not None:
                row["speedup_vs_eager"] = base["median_s"] / row["median_s"]


def peak_key(backend: str, device: str) -> str:
    """Name the peak that a backend's rate is compared with: CPU fp32, CUDA fp32 or fp16."""
    if device != "cuda":
        return "cpu_fp32"
    return "cuda_fp16" if "fp16" in backend else "cuda_fp32"


def add_peak_fractions(results: dict[str, Any], peaks: dict[str, dict[str, Any]]) -> None:
    """Add `fraction_of_peak`: the row's GFLOP/s over the peak of its device and precision."""
    devices = {entry["name"]: entry["device"] for entry in results["backends"]}
    for row in results["network"]:
        if row.get("status") == "ok" and row.get("gflops"):
            peak = peaks[peak_key(row["backend"], devices[row["backend"]])]["gflops"]
            row["fraction_of_peak"] = row["gflops"] / peak


def _target(name: str, lr_size: int, value, threshold: float, higher_is_better: bool,
            missing: str) -> dict[str, Any]:
    if value is None:
        return {"target": name, "lr_size": lr_size, "value": None, "threshold": threshold,
                "met": None, "reason": missing}
    met = value >= threshold if higher_is_better else value <= threshold
    return {"target": name, "lr_size": lr_size, "value": value, "threshold": threshold,
            "met": bool(met), "reason": ""}


def evaluate_targets(results: dict[str, Any], sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Check the runtime's targets, listing the ones this run did not measure with the reason."""
    targets = []
    for lr_size, threshold in SPEEDUP_TARGETS.items():
        runtime = find(results["end_to_end"], backend=RUNTIME_CPU, lr_size=lr_size,
                       sampler="euler", steps=8, status="ok")
        value = runtime.get("speedup_vs_eager") if runtime else None
        targets.append(_target(
            "runtime end-to-end speedup over eager, Euler 8 steps", lr_size, value, threshold,
            True, _missing(lr_size, sizes, "the Euler 8-step cell of eager or the runtime"),
        ))
    for lr_size in sizes:
        if lr_size < TARGET_MIN_LR:
            continue
        net = find(results["network"], backend=RUNTIME_CPU, lr_size=lr_size, status="ok")
        targets.append(_target(
            "runtime network GFLOP/s over the measured matmul peak", lr_size,
            net.get("fraction_of_peak") if net else None, PEAK_FRACTION_TARGET, True,
            "the runtime's network row did not run",
        ))
        e2e = find(results["end_to_end"], backend=RUNTIME_CPU, lr_size=lr_size,
                   sampler="euler", steps=8, status="ok")
        targets.append(_target(
            "runtime end-to-end time over its network calls, Euler 8 steps", lr_size,
            e2e.get("e2e_over_network") if e2e else None, E2E_OVER_NETWORK_TARGET, False,
            _missing(lr_size, sizes, "the runtime's Euler 8-step cell"),
        ))
    return targets


def _missing(lr_size: int, sizes: tuple[int, ...], what: str) -> str:
    if lr_size not in sizes:
        return f"not measured: LR {lr_size} is not among this run's sizes {list(sizes)}"
    return f"not measured: {what} did not run"


def fit_memory(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fit growth_mb = intercept + slope * output megapixels per (kind, tile) series.

    Linear growth shows as a good fit (r2 near 1) whose slope is the memory the
    pipeline holds per output megapixel. Flat memory shows as a slope near 0 and a
    small spread between the smallest and the largest growth.
    """
    series: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("growth_mb") is not None:
            series.setdefault((row["kind"], row["tile"]), []).append(row)
    fits = []
    for (kind, tile), points in sorted(series.items()):
        x = np.array([p["out_mp"] for p in points])
        y = np.array([p["growth_mb"] for p in points])
        fit = {"kind": kind, "tile": tile, "points": len(points),
               "min_growth_mb": float(y.min()), "max_growth_mb": float(y.max())}
        if len(points) >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            predicted = intercept + slope * x
            total = float(np.sum((y - y.mean()) ** 2))
            fit.update(
                slope_mb_per_mp=float(slope),
                intercept_mb=float(intercept),
                r2=1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else 1.0,
            )
        fits.append(fit)
    return fits
