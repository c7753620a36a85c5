"""The training loop of fmsr: flow matching on random crops, EMA, AMP, DDP."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel

from fmsr_infer import flow
from fmsr_train import checkpoint as ckpt
from fmsr_train.config import Config, FlowConfig, from_dict
from fmsr_train.data import CropDataset, ShardSampler, load_pairs
from fmsr_train.evaluate import evaluate
from fmsr_train.model import UNetSR, count_parameters
from fmsr_train.resize_torch import upsample

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run stopped early for a reason the user must act on."""


def flow_loss(
    model: nn.Module,
    hr: torch.Tensor,
    lr: torch.Tensor,
    x_0: torch.Tensor,
    t: torch.Tensor,
    fm: FlowConfig,
) -> torch.Tensor:
    """Flow-matching loss of one batch.

    Args:
        hr: [N, 3, H, W] HR crops in [0, 1]; lr: [N, 3, H/4, W/4] their LR in [0, 1].
        x_0: [N, 3, H, W] the noise; t: [N] times in [0, 1].
    Returns the mean squared error of the velocity (prediction "velocity") or of x_1
    (prediction "x1").
    """
    cond = flow.to_network(upsample(lr))
    x_1 = flow.data_from_image(flow.to_network(hr), cond, fm.target, fm.residual_scale)
    x_t = flow.interpolate(x_0, x_1, t[:, None, None, None])
    out = model(x_t, cond, t).float()
    if fm.prediction == "velocity":
        return F.mse_loss(out, flow.target_velocity(x_0, x_1))
    return F.mse_loss(out, x_1)


def ema_avg_fn(decay: float):
    """EMA update with a warm-up: the decay is min(decay, (1 + n) / (10 + n)).

    Short runs would otherwise keep mostly the initial weights in the average.
    """

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current

    return avg_fn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, else Gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def select_device(pref: str, ddp: Distributed) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", ddp.local_rank)
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingStopped(f"train.device is {pref!r} but CUDA is not available; use cpu")
    return device


def amp_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype, or None for fp32. AMP runs on CUDA only."""
    if device.type != "cuda":
        if requested in ("fp16", "bf16"):
            log.warning("train.amp=%s ignored: AMP runs on CUDA only, training in fp32", requested)
        return None
    if requested == "off":
        return None
    if requested == "bf16" or (requested == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def lr_factor(step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_ratio` at progress 1."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        cfg = config
        self.ddp = init_distributed(cfg.train.device)
        self.device = select_device(cfg.train.device, self.ddp)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.run_dir = Path(cfg.run_dir)
        self.amp_dtype = amp_dtype(cfg.train.amp, self.device)

        # Model, EMA and optimizer; every rank starts from the same weights.
        torch.manual_seed(cfg.train.seed)
        self.model = UNetSR(cfg.model).to(self.device)
        self.model.grad_checkpoint = cfg.train.grad_checkpoint
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.ema = AveragedModel(self.model, avg_fn=ema_avg_fn(cfg.train.ema_decay), use_buffers=True)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.net: nn.Module = self.model
        if self.ddp.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        # Noise and times come from one CPU generator per rank, saved in checkpoints.
        self.noise_gen = torch.Generator().manual_seed(cfg.train.seed * 1009 + self.ddp.rank + 1)
        self.step = 0
        self.samples_seen = 0
        self.elapsed_s = 0.0
        self.nonfinite_run = 0
        self.samples_per_step = cfg.data.batch_size * cfg.data.grad_accum * self.ddp.world_size
        self.writer = None
        self.val_pairs = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng = {"noise": self.noise_gen.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": "fmsr-checkpoint-1",
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_n_averaged": self.ema.n_averaged,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "elapsed_s": self.elapsed_s,
            "nonfinite_run": self.nonfinite_run,
            "rng": rng,
            "world_size": self.ddp.world_size,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.elapsed_s = float(state["elapsed_s"])
        self.nonfinite_run = int(state["nonfinite_run"])
        if int(state.get("world_size", 1)) == self.ddp.world_size:
            self.noise_gen.set_state(state["rng"]["noise"])
        else:
            log.warning(
                "checkpoint was written by %d processes, resuming on %d: the noise stream "
                "restarts, so this run will not equal an uninterrupted one",
                state.get("world_size", 1), self.ddp.world_size,
            )
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self) -> Path:
        path = ckpt.checkpoint_dir(self.run_dir) / f"step_{self.step}.pt"
        ckpt.save_atomic(self.state_dict(), path)
        ckpt.prune(self.run_dir, self.config.train.keep_last)
        log.info("saved checkpoint %s", path)
        return path

    def resume(self, target: str) -> None:
        """Resume from `auto` (the newest readable checkpoint of the run, if any) or a path."""
        if target == "auto":
            path = ckpt.latest(self.run_dir)
            if path is None:
                log.info("no checkpoint in %s, starting from step 0", ckpt.checkpoint_dir(self.run_dir))
                return
        else:
            path = Path(target)
        state = ckpt.load(path, map_location=self.device)
        self.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ logging
    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.ddp.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "kind"):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard is not installed; metrics go to metrics.jsonl only")
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    # ------------------------------------------------------------------ evaluation
    def run_eval(self) -> dict[str, Any] | None:
        cfg = self.config
        if not self.ddp.is_main or cfg.data.val_dir is None:
            return None
        if self.val_pairs is None:
            self.val_pairs = load_pairs(cfg.data.val_dir, cfg.data.val_lr_dir)
            if cfg.eval.max_images > 0:
                self.val_pairs = self.val_pairs[: cfg.eval.max_images]
        steps = cfg.fm.sampler_default_steps
        grid = self.run_dir / "samples" / f"step_{self.step}_x4_s{steps}.png"
        result = evaluate(
            self.ema.module, self.val_pairs, cfg.fm, steps, self.device,
            seed=cfg.eval.seed, sampler=cfg.fm.sampler_default, grid_path=grid,
            time_grid=cfg.fm.sampler_default_grid, shift=cfg.fm.sampler_default_shift,
        )
        log.info(
            "eval step %d: Y-PSNR %.3f dB SSIM %.4f (bicubic %.3f dB / %.4f), %s %d steps "
            "on the %s grid",
            self.step, result["psnr_y"], result["ssim_y"],
            result["bicubic_psnr_y"], result["bicubic_ssim_y"], cfg.fm.sampler_default,
            steps, cfg.fm.sampler_default_grid,
        )
        self._write_metrics({"kind": "eval", "step": self.step, **result})
        return result

    # ------------------------------------------------------------------ loop
    def _loader(self, stop_samples: int):
        cfg = self.config
        pairs = load_pairs(cfg.data.train_dir, cfg.data.train_lr_dir, min_size=cfg.data.hr_crop)
        dataset = CropDataset(pairs, cfg.data.hr_crop, cfg.train.seed, stop_samples)
        sampler = ShardSampler(self.samples_seen, stop_samples, self.ddp.rank, self.ddp.world_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=cfg.data.num_workers > 0,
        )
        return len(pairs), iter(loader)

    def _micro_step(self, hr: torch.Tensor, lr: torch.Tensor, sync: bool) -> torch.Tensor:
        cfg = self.config
        hr = hr.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        lr = lr.to(self.device, non_blocking=True)
        n = hr.shape[0]

        # Noise x_0 and times t; a fraction of samples starts from zero noise.
        x_0 = torch.randn(hr.shape, generator=self.noise_gen)
        t = torch.rand(n, generator=self.noise_gen)
        if cfg.fm.zero_noise_prob > 0:
            keep = torch.rand(n, generator=self.noise_gen) >= cfg.fm.zero_noise_prob
            x_0 = x_0 * keep[:, None, None, None]
        if cfg.fm.noise_scale == "uniform":
            x_0 = x_0 * torch.rand(n, generator=self.noise_gen)[:, None, None, None]
        x_0 = x_0.to(self.device).contiguous(memory_format=self.memory_format)
        t = t.to(self.device)

        no_sync = self.net.no_sync() if (self.ddp.world_size > 1 and not sync) else contextlib.nullcontext()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with no_sync:
            with autocast:
                loss = flow_loss(self.net, hr, lr, x_0, t, cfg.fm)
            self.scaler.scale(loss / cfg.data.grad_accum).backward()
        return loss.detach()

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss).float()
        if self.ddp.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def train(self) -> dict[str, Any]:
        cfg = self.config
        tc = cfg.train
        budget_s = tc.max_minutes * 60.0
        stop_samples = tc.max_steps * self.samples_per_step
        n_images, batches = self._loader(stop_samples)
        if self.ddp.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(_dump_yaml(cfg.to_dict()))
            self._open_tensorboard()
            log.info(
                "training UNetSR (%.2f M parameters) on %s: %d images, crop %d, "
                "effective batch %d (batch %d x accumulation %d x %d processes), amp %s",
                count_parameters(self.model) / 1e6, self.device, n_images, cfg.data.hr_crop,
                self.samples_per_step, cfg.data.batch_size, cfg.data.grad_accum,
                self.ddp.world_size, self.amp_dtype or "off",
            )

        last_eval = None
        interval_loss, interval_steps = 0.0, 0
        interval_start = time.perf_counter()
        session_start = time.perf_counter() - self.elapsed_s
        while self.step < tc.max_steps:
            # Learning rate: warm-up, then cosine over steps or the time budget.
            self.elapsed_s = time.perf_counter() - session_start
            progress = self.step / tc.max_steps
            if budget_s > 0:
                progress = max(progress, self.elapsed_s / budget_s)
            lr_now = tc.lr * lr_factor(self.step, progress, tc.warmup_steps, tc.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_now

            # Forward and backward over the accumulated micro-batches.
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            losses = []
            for micro in range(cfg.data.grad_accum):
                hr, lr = next(batches)
                losses.append(self._micro_step(hr, lr, sync=micro == cfg.data.grad_accum - 1))
            self.samples_seen += self.samples_per_step
            loss = torch.stack(losses).mean()

            # A non-finite loss skips the update; too many in a row stop the run.
            if not self._all_finite(loss):
                self.nonfinite_run += 1
                log.warning(
                    "step %d: non-finite loss %s, update skipped (%d in a row, limit %d)",
                    self.step + 1, loss.item(), self.nonfinite_run, tc.max_nonfinite,
                )
                self.optimizer.zero_grad(set_to_none=True)
                if self.nonfinite_run >= tc.max_nonfinite:
                    raise TrainingStopped(
                        f"{self.nonfinite_run} non-finite losses in a row at step {self.step + 1}; "
                        "lower train.lr, set train.grad_clip, or use train.amp=bf16/off"
                    )
                self.step += 1
                continue
            self.nonfinite_run = 0

            # Optimizer step with gradient clipping, then the EMA.
            self.scaler.unscale_(self.optimizer)
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.ema.update_parameters(self.model)
            self.step += 1
            interval_loss += loss.item()
            interval_steps += 1

            # One status line per interval.
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                now = time.perf_counter()
                images_per_s = interval_steps * self.samples_per_step / max(now - interval_start, 1e-9)
                record = {
                    "kind": "train", "step": self.step, "loss": interval_loss / max(interval_steps, 1),
                    "lr": lr_now, "images_per_s": images_per_s,
                    "effective_batch": self.samples_per_step, "elapsed_s": now - session_start,
                }
                if self.ddp.is_main:
                    log.info(
                        "step %d  loss %.5f  lr %.2e  %.1f images/s  effective batch %d",
                        self.step, record["loss"], lr_now, images_per_s, self.samples_per_step,
                    )
                self._write_metrics(record)
                interval_loss, interval_steps, interval_start = 0.0, 0, now

            # Periodic evaluation and checkpoints; the time budget ends the run here too.
            self.elapsed_s = time.perf_counter() - session_start
            out_of_time = budget_s > 0 and self.elapsed_s >= budget_s
            finished = self.step >= tc.max_steps or out_of_time
            if cfg.eval.every_steps > 0 and (self.step % cfg.eval.every_steps == 0 or finished):
                last_eval = self.run_eval() or last_eval
            if self.ddp.is_main and (self.step % tc.ckpt_every == 0 or finished):
                self.save()
            if self.ddp.world_size > 1:
                dist.barrier()
            if out_of_time:
                log.info("time budget of %.1f minutes reached at step %d", tc.max_minutes, self.step)
                break

        if self.writer is not None:
            self.writer.close()
        return {"step": self.step, "eval": last_eval, "elapsed_s": self.elapsed_s}


def _dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def config_from_checkpoint(state: dict[str, Any]) -> Config:
    return from_dict(state["config"])
