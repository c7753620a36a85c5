import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SET5, photo_arrays
from fmsr_infer.resize import imresize, mod_crop, resize_weights, upsample
from fmsr_train.resize_torch import upsample as upsample_torch

SET5_NAMES = ["baby", "bird", "butterfly", "head", "woman"]
needs_set5 = pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5}")


def test_weights_rows_sum_to_one():
    for in_len, out_len, scale in [(7, 28, 4.0), (100, 25, 0.25), (5, 2, 0.5)]:
        weights, indices = resize_weights(in_len, out_len, scale)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        assert indices.min() >= 0
        assert indices.max() < in_len


def test_downscale_taps_widened():
    weights, _ = resize_weights(64, 16, 0.25)
    assert weights.shape[1] == 16  # the cubic's 4 taps widened by 1 / 0.25


def test_output_size_is_ceil():
    assert imresize(np.zeros((10, 7)), 0.25).shape == (3, 2)
    assert imresize(np.zeros((3, 5, 3)), 4.0).shape == (12, 20, 3)


def test_constant_image_is_preserved():
    out = imresize(np.full((9, 13, 3), 0.3), 4.0)
    np.testing.assert_allclose(out, 0.3)


def test_symmetric_edge_mirroring():
    # MATLAB's 'symmetric' padding repeats the edge pixel: ..., 1, 0 | 0, 1, ...
    _, indices = resize_weights(6, 12, 2.0)
    assert indices[0].tolist() == [1, 0, 0, 1]
    _, indices = resize_weights(6, 12, 2.0)
    assert indices[-1].tolist() == [4, 5, 5, 4]


def test_torch_upsample_matches_numpy():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (3, 5), (37, 53)]:
        lr = rng.uniform(size=(h, w, 3))
        expected = upsample(lr)
        actual = upsample_torch(torch.from_numpy(lr).permute(2, 0, 1)[None].float())
        np.testing.assert_allclose(actual[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_photo_downscale_close_to_pil():
    # MATLAB's and PIL's antialiased bicubic differ mostly at the borders.
    hr = mod_crop(photo_arrays()["astronaut"]).astype(np.float64)
    ours = imresize(hr, 0.25)[8:-8, 8:-8]
    pil = Image.fromarray(hr.astype(np.uint8)).resize((128, 128), Image.BICUBIC)
    pil = np.asarray(pil, dtype=np.float64)[8:-8, 8:-8]
    assert np.abs(ours - pil).mean() < 1.0


@needs_set5
@pytest.mark.parametrize("name", SET5_NAMES)
def test_reproduces_official_set5_lr(name):
    hr = np.asarray(Image.open(SET5 / "HR" / f"{name}.png").convert("RGB"))
    official = np.asarray(Image.open(SET5 / "LR_bicubic_X4" / f"{name}x4.png").convert("RGB"))
    ours = np.clip(np.floor(imresize(mod_crop(hr) / 255.0, 0.25) * 255 + 0.5), 0, 255)
    mse = np.mean((ours - official.astype(np.float64)) ** 2)
    psnr = 10 * np.log10(255.0**2 / mse)
    assert psnr >= 55.0, f"{name}: {psnr:.2f} dB"
    assert np.abs(ours - official).max() <= 2
