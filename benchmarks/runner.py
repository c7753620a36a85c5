"""Run the comparison: every backend, size, sampler and step count, in one process."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.backends import (
    BASELINE,
    RUNTIME_CPU,
    Backend,
    BackendUnavailable,
    TorchBackend,
)
from benchmarks.images import synthetic_lr
from benchmarks.measure import CallTimer, count_network_flops, psnr_uint8, summarize, time_repeated
from benchmarks.models import BenchModel
from benchmarks.runtime import RunSettings, tiling_unavailable_reason
from fmsr_infer import flow
from fmsr_infer.noise import gaussian_noise
from fmsr_infer.resize import upsample
from fmsr_infer.samplers import network_calls

log = logging.getLogger(__name__)

PARITY_MIN_PSNR_DB = 50.0
# The cells that the speed targets are about, which run whatever the --cell-budget.
REQUIRED_CELLS = {(BASELINE, "euler", 8), (RUNTIME_CPU, "euler", 8)}
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchConfig:
    """The settings of one run, filled in from the command line by bench.py."""

    sizes: tuple[int, ...]
    steps: tuple[int, ...]
    samplers: tuple[str, ...]
    repeats: int  # timed end-to-end runs per cell, after one warm-up run per size
    network_min_runs: int
    network_min_seconds: float  # network rows keep timing until this long ...
    network_max_runs: int  # ... but stop at this many runs
    cell_budget_s: float  # estimated seconds above which a cell is skipped
    seed: int
    temperature: float
    threads: int
    memory_sizes: tuple[int, ...]
    memory_tile: int
    probe_timeout_s: float = 900.0


def network_inputs(lr_u8: np.ndarray, scale: int, seed: int):
    """Return x_t, cond and t for timing one network call, as float32 numpy arrays.

    cond is the image's conditioning and x_t the state halfway along the path from the
    seed's noise, so every backend gets realistic values.
    """
    cond = flow.to_network(upsample(lr_u8.astype(np.float32) / 255.0, scale))
    cond = np.ascontiguousarray(cond.transpose(2, 0, 1)[None], dtype=np.float32)
    noise = gaussian_noise(seed, 3, cond.shape[2], cond.shape[3])[None]
    x_t = flow.interpolate(noise, cond, np.float32(0.5)).astype(np.float32)
    return x_t, cond, np.full((1,), 0.5, np.float32)


class Runner:
    """Measure the backends on one model; `run` returns the results as plain data."""

    def __init__(self, config: BenchConfig, model: BenchModel, backends: list[Backend]):
        self.config = config
        self.model = model
        self.backends = backends
        self.scale = model.info.scale
        self.rows: dict[str, list[dict[str, Any]]] = {
            "network": [], "end_to_end": [], "memory": [], "gpu_memory": []
        }
        self.status: dict[str, dict[str, Any]] = {}

    # ---- backends -------------------------------------------------------------------

    def setup_backends(self) -> list[Backend]:
        active = []
        for backend in self.backends:
            entry = {"name": backend.name, "device": backend.device,
                     "description": backend.description}
            try:
                backend.setup()
            except BackendUnavailable as exc:
                entry.update(status="unavailable", reason=str(exc))
                log.info("%s: unavailable: %s", backend.name, exc)
            except Exception as exc:  # a broken install must not stop the other rows
                entry.update(status="failed", reason=f"setup raised {type(exc).__name__}: {exc}")
                log.warning("%s: setup failed: %s", backend.name, exc)
            else:
                entry.update(status="ok", reason="")
                active.append(backend)
            self.status[backend.name] = entry
        return active

    def fail_backend(self, backend: Backend, reason: str) -> None:
        log.warning("%s: %s", backend.name, reason)
        entry = self.status[backend.name]
        entry["status"] = "failed"
        entry["reason"] = reason

    # ---- one size ---------------------------------------------------------------------

    def run_size(self, lr_size: int, active: list[Backend]) -> None:
        height = width = lr_size * self.scale
        lr_u8 = synthetic_lr(lr_size, self.config.seed)
        x_t, cond, t = network_inputs(lr_u8, self.scale, self.config.seed)
        flops = count_network_flops(self.flop_model(), height, width)
        reference_output: np.ndarray | None = None
        reference_images: dict[tuple[str, int], np.ndarray] = {}
        base = {"lr_size": lr_size, "out_size": height, "out_mp": height * width / 1e6}

        for backend in active:
            if self.status[backend.name]["status"] != "ok":
                reason = f"not run: {self.status[backend.name]['reason']}"
                self.add_missing_rows(backend, base, "failed", reason)
                continue
            try:
                notes = backend.prepare(height, width)
                row = self.time_network(backend, (x_t, cond, t), flops, base, notes)
                output = row.pop("_output")
                if backend.name == BASELINE:
                    reference_output = output
                elif reference_output is not None:
                    row["max_abs_error_vs_eager"] = float(np.max(np.abs(output - reference_output)))
                self.rows["network"].append(row)
                self.time_end_to_end(backend, lr_u8, base, row["median_s"], reference_images)
            except Exception as exc:  # torch.compile and GPU errors have many types
                self.fail_backend(backend, f"failed at LR {lr_size}: {type(exc).__name__}: {exc}")
                self.add_missing_rows(backend, base, "failed", f"{type(exc).__name__}: {exc}")
            gc.collect()
            time.sleep(0.5)  # let the previous backend's spinning worker threads go idle

    def flop_model(self) -> torch.nn.Module:
        if self.model.torch_model is not None:
            return self.model.torch_model
        from fmsr_train.model import ModelConfig, UNetSR

        return UNetSR(ModelConfig(**(self.model.info.model_config or {})))

    def add_missing_rows(self, backend: Backend, base: dict, status: str, reason: str) -> None:
        """Add the rows of a size that were not measured, with the reason, to both tables."""
        done_net = {(r["backend"], r["lr_size"]) for r in self.rows["network"]}
        if (backend.name, base["lr_size"]) not in done_net:
            self.rows["network"].append(
                {"backend": backend.name, **base, "status": status, "reason": reason}
            )
        done = {(r["backend"], r["lr_size"], r["sampler"], r["steps"])
                for r in self.rows["end_to_end"]}
        for sampler in self.config.samplers:
            for steps in self.config.steps:
                if (backend.name, base["lr_size"], sampler, steps) in done:
                    continue
                self.rows["end_to_end"].append({
                    "backend": backend.name, **base, "sampler": sampler, "steps": steps,
                    "network_calls": network_calls(sampler, steps),
                    "status": status, "reason": reason,
                })

    def time_network(self, backend: Backend, arrays, flops: int, base: dict, notes: dict):
        inputs = backend.make_inputs(*arrays)
        for _ in range(2):  # warm-up: first-call allocation and kernel selection
            backend.network(inputs)
        times = time_repeated(
            lambda: backend.network(inputs),
            min_runs=self.config.network_min_runs,
            min_seconds=self.config.network_min_seconds,
            max_runs=self.config.network_max_runs,
            sync=backend.sync,
        )
        stats = summarize(times)
        row = {
            "backend": backend.name, **base, "status": "ok", "reason": "", **stats,
            "flops": flops, "gflops": flops / stats["median_s"] / 1e9, "notes": notes,
            "_output": backend.output_numpy(backend.network(inputs)),
        }
        log.info("%s network LR %d: median %.4f s, p90 %.4f s, %.1f GFLOP/s (%d runs)",
                 backend.name, base["lr_size"], stats["median_s"], stats["p90_s"],
                 row["gflops"], stats["runs"])
        return row

    def time_end_to_end(self, backend, lr_u8, base, network_s, reference_images) -> None:
        config = self.config
        timer = CallTimer(sync=backend.sync if backend.device != "cpu" else None)

        # Warm-up run, which also measures the work outside the network.
        if backend.device.startswith("cuda") and isinstance(backend, TorchBackend):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        backend.upscale(lr_u8, RunSettings("euler", 1, config.seed, config.temperature), timer)
        overhead_s = max(0.0, time.perf_counter() - start - timer.seconds)
        if backend.device.startswith("cuda") and isinstance(backend, TorchBackend):
            self.rows["gpu_memory"].append({
                "backend": backend.name, **base,
                "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
            })

        for sampler in config.samplers:
            for steps in config.steps:
                calls = network_calls(sampler, steps)
                row = {"backend": backend.name, **base, "sampler": sampler, "steps": steps,
                       "network_calls": calls}
                estimate = config.repeats * (calls * network_s + overhead_s)
                required = (backend.name, sampler, steps) in REQUIRED_CELLS
                if estimate > config.cell_budget_s and not required:
                    row.update(status="skipped", reason=(
                        f"estimated {estimate:.0f} s for {config.repeats} runs exceeds "
                        f"--cell-budget {config.cell_budget_s:.0f} s"))
                    self.rows["end_to_end"].append(row)
                    continue
                row.update(self.time_cell(backend, lr_u8, sampler, steps, timer))
                image = row.pop("_image")
                key = (sampler, steps)
                if backend.name == BASELINE:
                    reference_images[key] = image
                elif key in reference_images:
                    psnr = psnr_uint8(image, reference_images[key])
                    row["psnr_vs_eager_db"] = None if np.isinf(psnr) else psnr
                    row["identical_to_eager"] = bool(np.isinf(psnr))
                    row["parity_ok"] = bool(psnr >= PARITY_MIN_PSNR_DB)
                self.rows["end_to_end"].append(row)

    def time_cell(self, backend, lr_u8, sampler, steps, timer) -> dict[str, Any]:
        run = RunSettings(sampler, steps, self.config.seed, self.config.temperature)
        totals, network = [], []
        image, calls = None, 0
        for _ in range(self.config.repeats):
            timer.reset()
            backend.sync()
            start = time.perf_counter()
            image, calls = backend.upscale(lr_u8, run, timer)
            backend.sync()
            totals.append(time.perf_counter() - start)
            network.append(timer.seconds)
        stats = summarize(totals)
        network_median = float(np.median(network))
        log.info("%s e2e LR %d %s %d: median %.3f s, p90 %.3f s, network %.3f s (%d runs)",
                 backend.name, lr_u8.shape[0], sampler, steps, stats["median_s"],
                 stats["p90_s"], network_median, stats["runs"])
        return {
            "status": "ok", "reason": "", **stats, "measured_calls": calls,
            "network_median_s": network_median,
            "e2e_over_network": stats["median_s"] / network_median if network_median else None,
            "_image": image,
        }

    # ---- memory -----------------------------------------------------------------------

    def run_memory(self) -> None:
        tiling_reason = tiling_unavailable_reason()
        for lr_size in self.config.memory_sizes:
            base = {"lr_size": lr_size, "out_mp": (lr_size * self.scale) ** 2 / 1e6}
            probes = [(BASELINE, "eager", 0), (RUNTIME_CPU, "runtime", 0),
                      (RUNTIME_CPU, "runtime", self.config.memory_tile)]
            for backend, kind, tile in probes:
                row = {"backend": backend, "kind": kind, "tile": tile, **base}
                if kind == "eager" and self.model.ckpt_path is None:
                    row.update(status="skipped", reason=self.model.torch_missing_reason)
                elif tile and tiling_reason:
                    row.update(status="unavailable", reason=tiling_reason)
                else:
                    row.update(self.probe_memory(kind, lr_size, tile))
                self.rows["memory"].append(row)

    def probe_memory(self, kind: str, lr_size: int, tile: int) -> dict[str, Any]:
        command = [
            sys.executable, "-m", "benchmarks.memory_probe", "--kind", kind,
            "--model", str(self.model.onnx_path), "--lr-size", str(lr_size),
            "--tile", str(tile), "--seed", str(self.config.seed),
            "--temperature", str(self.config.temperature), "--threads", str(self.config.threads),
        ]
        if kind == "eager":
            command += ["--ckpt", str(self.model.ckpt_path)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=self.config.probe_timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"status": "failed",
                    "reason": f"memory probe timed out after {self.config.probe_timeout_s:.0f} s"}
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            return {"status": "failed",
                    "reason": f"memory probe exited with {proc.returncode}: {tail[0]}"}
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("memory %s LR %d tile %d: run peak %.0f MB, growth %.0f MB", kind, lr_size,
                 tile, probe["run_peak_mb"], probe["growth_mb"] or float("nan"))
        return {"status": "ok", "reason": "", **probe}

    # ---- all --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        active = self.setup_backends()
        # The baseline first: its outputs are the parity reference for the others.
        active.sort(key=lambda backend: backend.name != BASELINE)
        for lr_size in self.config.sizes:
            self.run_size(lr_size, active)
        for backend in self.backends:
            if backend.name in self.status and backend in active:
                self.status[backend.name]["details"] = backend.details()
        if self.config.memory_sizes:
            self.run_memory()
        return {"backends": [self.status[b.name] for b in self.backends], **self.rows}
