import copy

import numpy as np
import pytest
import torch

from conftest import photo_arrays
from fmsr_train import checkpoint as ckpt
from fmsr_train.config import FlowConfig, load_config
from fmsr_train.data import CropDataset, Pair, ShardSampler, make_lr
from fmsr_train.model import ModelConfig, UNetSR
from fmsr_train.train import flow_loss, lr_factor

TINY = ModelConfig(base_channels=8, blocks_per_scale=1, time_dim=16)


def photo_batch(n: int, crop: int = 32, seed: int = 0):
    """HR crops of scikit-image photos with their bicubic LR, float in [0, 1]."""
    pairs = []
    for name, arr in photo_arrays().items():
        hr = arr[: arr.shape[0] // 4 * 4, : arr.shape[1] // 4 * 4]
        pairs.append(Pair(name, hr, make_lr(hr)))
    dataset = CropDataset(pairs, crop, seed, length=n)
    items = [dataset[k] for k in range(n)]
    return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])


def test_model_output_shape_any_multiple():
    model = UNetSR(TINY)
    for h, w in [(4, 4), (12, 20), (36, 8)]:
        out = model(torch.zeros(2, 3, h, w), torch.zeros(2, 3, h, w), torch.rand(2))
        assert out.shape == (2, 3, h, w)


def test_model_rejects_bad_channel_mult():
    with pytest.raises(ValueError, match="channel_mult"):
        ModelConfig(channel_mult=(1, 2))


@pytest.mark.parametrize("prediction", ["velocity", "x1"])
@pytest.mark.parametrize("target", ["image", "residual"])
def test_optimizer_steps_lower_loss(target, prediction):
    torch.manual_seed(0)
    model = UNetSR(TINY)
    fm = FlowConfig(target=target, prediction=prediction)
    hr, lr = photo_batch(8)
    gen = torch.Generator().manual_seed(0)
    x_0 = torch.randn(hr.shape, generator=gen)
    t = torch.rand(8, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = flow_loss(model, hr, lr, x_0, t, fm).item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = flow_loss(model, hr, lr, x_0, t, fm)
        loss.backward()
        optimizer.step()
    last = flow_loss(model, hr, lr, x_0, t, fm).item()
    assert last < 0.8 * first, (first, last)


def test_grad_accumulation_equals_full_batch():
    torch.manual_seed(0)
    model = UNetSR(TINY)
    # A trained-looking output layer, so that every parameter gets a gradient.
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    fm = FlowConfig()
    hr, lr = photo_batch(8)
    gen = torch.Generator().manual_seed(1)
    x_0 = torch.randn(hr.shape, generator=gen)
    t = torch.rand(8, generator=gen)

    full = copy.deepcopy(model)
    flow_loss(full, hr, lr, x_0, t, fm).backward()

    accum = copy.deepcopy(model)
    for i in range(4):
        part = slice(2 * i, 2 * i + 2)
        (flow_loss(accum, hr[part], lr[part], x_0[part], t[part], fm) / 4).backward()

    for (name, p_full), p_accum in zip(full.named_parameters(), accum.parameters()):
        torch.testing.assert_close(p_accum.grad, p_full.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_checkpoint_roundtrip(tmp_path):
    model = UNetSR(TINY)
    state = {"model": model.state_dict(), "step": 7, "config": {"a": [1, 2]}}
    path = tmp_path / "checkpoints" / "step_7.pt"
    ckpt.save_atomic(state, path)
    loaded = ckpt.load(path)
    assert loaded["step"] == 7
    assert loaded["config"] == {"a": [1, 2]}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)
    assert [p.name for p in path.parent.iterdir()] == ["step_7.pt"]


def test_checkpoint_load_rejects_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        ckpt.load(path)


def test_prune_keeps_last(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_atomic({"step": step}, tmp_path / "checkpoints" / f"step_{step}.pt")
    ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]


def test_dataset_is_function_of_index():
    hr, lr = photo_batch(4, seed=3)
    hr2, lr2 = photo_batch(4, seed=3)
    assert torch.equal(hr, hr2)
    assert torch.equal(lr, lr2)
    assert hr.shape == (4, 3, 32, 32)
    assert lr.shape == (4, 3, 8, 8)


def test_shard_sampler_splits_ranks():
    a = list(ShardSampler(10, 20, rank=0, world_size=2))
    b = list(ShardSampler(10, 20, rank=1, world_size=2))
    assert a == [10, 12, 14, 16, 18]
    assert b == [11, 13, 15, 17, 19]


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 0.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 0.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(50, 0.5, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_config_overrides_and_unknown_keys(tmp_path):
    config = load_config(None, ["train.max_steps=50", "data.hr_crop=64"])
    assert config.train.max_steps == 50
    assert config.data.hr_crop == 64
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(None, ["train.max_step=50"])
    with pytest.raises(ValueError, match="hr_crop"):
        load_config(None, ["data.hr_crop=30"])


def test_small_images_skipped_with_warning(tmp_path, caplog):
    from PIL import Image

    from fmsr_train.data import load_pairs

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(photo_arrays()["coffee"]).save(tmp_path / "coffee.png")
    pairs = load_pairs(tmp_path, min_size=64)
    assert [p.name for p in pairs] == ["coffee"]
    assert "skipping small.png" in caplog.text


def test_config_parses_yaml_numbers_and_words():
    config = load_config(None, ["train.lr=5e-4", "train.amp=off", "train.grad_checkpoint=true"])
    assert config.train.lr == 5e-4
    assert isinstance(config.train.lr, float)
    assert config.train.amp == "off"
    assert config.train.grad_checkpoint is True
    with pytest.raises(ValueError, match="train.max_steps is 'many'"):
        load_config(None, ["train.max_steps=many"])


def test_config_checks_sampler_defaults():
    config = load_config(None, ["fm.sampler_default_grid=shifted", "fm.sampler_default_shift=2"])
    assert (config.fm.sampler_default_grid, config.fm.sampler_default_shift) == ("shifted", 2.0)
    for overrides, message in (
        (["fm.sampler_default_grid=cosine"], "fm.sampler_default_grid is 'cosine'"),
        (["fm.sampler_default_shift=2"], "shift applies only to the 'shifted' grid"),
        (["fm.sampler_default_grid=shifted", "fm.sampler_default_shift=0"], "positive"),
        (["fm.sampler_default=ddim"], "fm.sampler_default is 'ddim'"),
        (["fm.sampler_default_steps=0"], "fm.sampler_default_steps is 0"),
        (["fm.noise_scale=gamma"], "fm.noise_scale is 'gamma'"),
    ):
        with pytest.raises(ValueError, match=message):
            load_config(None, overrides)


def test_untrained_default_temperature_rejected():
    # Temperature 0 needs training samples that start from x_0 = 0 ...
    with pytest.raises(ValueError, match="fm.temperature_default is 0, a noise scale"):
        load_config(None, ["fm.zero_noise_prob=0"])
    # ... or noise scales spread over [0, 1].
    config = load_config(None, ["fm.zero_noise_prob=0", "fm.noise_scale=uniform"])
    assert config.temperatures_trained() == {"range": [0.0, 1.0]}
    config = load_config(None, ["fm.zero_noise_prob=0", "fm.temperature_default=1"])
    assert config.temperatures_trained() == {"values": [1.0]}
    assert load_config(None).temperatures_trained() == {"values": [0.0, 1.0]}
    with pytest.raises(ValueError, match="fm.temperature_default is 0.5.*fm.noise_scale to uniform"):
        load_config(None, ["fm.temperature_default=0.5"])
    with pytest.raises(ValueError, match=r"shows noise scales 0\); set fm.zero_noise_prob below 1"):
        load_config(None, ["fm.zero_noise_prob=1", "fm.temperature_default=1"])


def test_older_checkpoint_config_still_loads():
    # Checkpoints written before the temperature check may pair zero_noise_prob 0 with
    # temperature_default 0; export and resume must still read them.
    from fmsr_train.config import from_dict

    config = from_dict({"fm": {"zero_noise_prob": 0.0, "temperature_default": 0.0}})
    assert config.temperatures_trained() == {"values": [1.0]}
