"""Resume, atomic saves, non-finite losses, distributed training, memory options."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES, run_cli
from fmsr_train import checkpoint as ckpt
from fmsr_train import train as train_module
from fmsr_train.config import FlowConfig, load_config
from fmsr_train.model import ModelConfig, UNetSR
from fmsr_train.train import Trainer, TrainingStopped, flow_loss
from test_train import photo_batch


def tiny_config(photo_dir, run_dir, *extra):
    overrides = TINY_OVERRIDES + [
        f"data.train_dir={photo_dir}", f"run_dir={run_dir}", "train.log_every=1", *extra
    ]
    return load_config(REPO / "config.yaml", overrides)


def train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def test_resume_equals_uninterrupted(photo_dir, tmp_path):
    full = Trainer(tiny_config(photo_dir, tmp_path / "full", "train.max_steps=8",
                               "train.ckpt_every=4", "train.keep_last=0"))
    full.train()

    # A second run resumed from the first one's step-4 checkpoint.
    resumed = Trainer(tiny_config(photo_dir, tmp_path / "resumed", "train.max_steps=8"))
    resumed.resume(str(tmp_path / "full" / "checkpoints" / "step_4.pt"))
    assert resumed.step == 4
    resumed.train()

    full_losses = train_losses(tmp_path / "full")
    resumed_losses = train_losses(tmp_path / "resumed")
    for step in range(5, 9):
        assert resumed_losses[step] == pytest.approx(full_losses[step], abs=1e-6), step
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)
    for a, b in zip(full.ema.module.parameters(), resumed.ema.module.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_resume_auto_without_checkpoint_starts_fresh(photo_dir, tmp_path):
    trainer = Trainer(tiny_config(photo_dir, tmp_path / "run", "train.max_steps=2"))
    trainer.resume("auto")
    assert trainer.step == 0


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from fmsr_train.checkpoint import save_atomic
state = {"w": torch.randn(4_000_000), "step": 0}
path = Path(sys.argv[1])
print("ready", flush=True)
for step in range(10_000):
    state["step"] = step
    save_atomic(state, path)
"""


def test_kill_during_save_never_corrupts(tmp_path):
    path = tmp_path / "checkpoints" / "step_1.pt"
    for delay in (0.6, 0.9, 1.3, 1.7):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():
            state = ckpt.load(path)
            assert state["w"].numel() == 4_000_000
        # Leftover temporaries are hidden and never picked up as checkpoints.
        assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] in ([], [1])


def test_killed_run_resumes_auto(photo_dir, tmp_path):
    run_dir = tmp_path / "run"
    sets = []
    for item in TINY_OVERRIDES + [f"data.train_dir={photo_dir}", f"run_dir={run_dir}",
                                  "train.max_steps=100000", "train.ckpt_every=2"]:
        sets += ["--set", item]
    proc = subprocess.Popen(["fmsr-train", "--config", str(REPO / "config.yaml"), *sets],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(ckpt.list_checkpoints(run_dir)) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path = ckpt.latest(run_dir)
    assert path is not None
    step = ckpt.load(path)["step"]
    trainer = Trainer(tiny_config(photo_dir, run_dir, "train.max_steps=100000"))
    trainer.resume("auto")
    assert trainer.step == step


def test_nonfinite_loss_skips_then_stops(photo_dir, tmp_path, monkeypatch, caplog):
    calls = {"n": 0}
    real_loss = train_module.flow_loss

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        # grad_accum is 2: micro-batches 3 and 4 are step 2, which gets a NaN.
        return loss * float("nan") if calls["n"] in (3, 4) or calls["n"] > 8 else loss

    monkeypatch.setattr(train_module, "flow_loss", sometimes_nan)
    trainer = Trainer(tiny_config(photo_dir, tmp_path / "run", "train.max_steps=50",
                                  "train.max_nonfinite=3"))
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row at step 7"):
        trainer.train()
    assert "non-finite loss" in caplog.text
    # Step 2 skipped, steps 1, 3, 4 trained, steps 5 to 7 non-finite: stopped at 7.
    assert trainer.step == 6
    assert "step 2: non-finite loss" in caplog.text
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()


def test_grad_checkpoint_same_gradients():
    torch.manual_seed(0)
    model = UNetSR(ModelConfig(base_channels=8, blocks_per_scale=2, time_dim=16))
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    hr, lr = photo_batch(2)
    x_0, t = torch.randn(hr.shape), torch.rand(2)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.grad_checkpoint = enabled
        flow_loss(model, hr, lr, x_0, t, FlowConfig()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_channels_last_same_output():
    torch.manual_seed(0)
    model = UNetSR(ModelConfig(base_channels=8, blocks_per_scale=1, time_dim=16)).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    x = torch.randn(2, 3, 16, 24)
    expected = model(x, x, torch.rand(2).fill_(0.5))
    cl = model.to(memory_format=torch.channels_last)
    actual = cl(x.contiguous(memory_format=torch.channels_last), x, torch.full((2,), 0.5))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_paired_lr_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from conftest import photo_arrays
    from fmsr_train.data import load_pairs, make_lr

    hr = photo_arrays()["coffee"][:200, :300]
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR" / "X4").mkdir(parents=True)
    Image.fromarray(hr).save(tmp_path / "HR" / "0001.png")
    lr = np.zeros((50, 75, 3), np.uint8) + 7  # distinct from a bicubic LR
    Image.fromarray(lr).save(tmp_path / "LR" / "X4" / "0001x4.png")
    pairs = load_pairs(tmp_path / "HR", tmp_path / "LR")
    assert np.array_equal(pairs[0].lr, lr)
    assert not np.array_equal(pairs[0].lr, make_lr(hr))

    Image.fromarray(lr[:40]).save(tmp_path / "LR" / "X4" / "0001x4.png")
    with pytest.raises(ValueError, match="expected 75x50"):
        load_pairs(tmp_path / "HR", tmp_path / "LR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_identical_weights(photo_dir, tmp_path):
    overrides = TINY_OVERRIDES + [
        f"data.train_dir={photo_dir}", f"run_dir={tmp_path / 'run'}",
        "train.max_steps=4", "train.device=cpu",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         str(REPO / "tests" / "ddp_worker.py"), str(REPO / "config.yaml"), str(tmp_path),
         *overrides],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["samples_per_step"] == 4 * 2 * 2  # batch x accumulation x processes
    for key, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][key]), key
    # The weights moved away from the shared initialisation.
    fresh = UNetSR(ModelConfig(base_channels=8, blocks_per_scale=1, time_dim=16))
    assert not torch.equal(fresh.conv_out.weight, rank0["model"]["conv_out.weight"])
    # Rank 0 alone writes checkpoints and logs.
    assert (tmp_path / "run" / "checkpoints" / "step_4.pt").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"step": 4' in line]) == 1


def test_train_cli_bad_config_is_clear(tmp_path):
    proc = run_cli("fmsr-train", "--set", "train.max_step=3", check=False)
    assert proc.returncode == 2
    assert "unknown keys" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("noise_scale", ["one", "uniform"])
def test_noise_scale_of_training_samples(photo_dir, tmp_path, monkeypatch, noise_scale):
    seen = []

    def recording_loss(net, hr, lr, x_0, t, fm):
        seen.append(x_0.detach().flatten(1).std(dim=1))
        return flow_loss(net, hr, lr, x_0, t, fm)

    monkeypatch.setattr(train_module, "flow_loss", recording_loss)
    config = tiny_config(
        photo_dir, tmp_path / "run", "train.max_steps=4", "data.batch_size=8", "data.grad_accum=1",
        "fm.zero_noise_prob=0", f"fm.noise_scale={noise_scale}", "fm.temperature_default=1",
    )
    Trainer(config).train()
    scales = torch.cat(seen)
    assert scales.numel() == 32
    if noise_scale == "one":
        # 32 x 32 x 3 values per sample: the std of N(0, 1) is 1 within a few percent.
        torch.testing.assert_close(scales, torch.ones_like(scales), atol=0.06, rtol=0)
    else:
        # Scales drawn from U(0, 1): spread over the interval.
        assert scales.max() < 1.06
        assert scales.min() < 0.3
        assert scales.max() > 0.7
        assert scales.std() > 0.15
