import math

import numpy as np
import pytest
from PIL import Image

from conftest import SET5, photo_arrays
from fmsr_infer.metrics import mean_scores, psnr, rgb_to_y, score, ssim, to_uint8
from fmsr_infer.resize import mod_crop, upsample

needs_set5 = pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5}")


def test_y_of_white_and_black():
    assert rgb_to_y(np.array([[[255, 255, 255]]]))[0, 0] == pytest.approx(235.0)
    assert rgb_to_y(np.array([[[0, 0, 0]]]))[0, 0] == pytest.approx(16.0)


def test_psnr_identical_is_inf():
    img = photo_arrays()["coffee"]
    assert math.isinf(psnr(img, img))


def test_psnr_known_value():
    a = np.zeros((20, 20), np.uint8)
    b = np.full((20, 20), 10, np.uint8)
    assert psnr(a, b, crop_border=0) == pytest.approx(10 * math.log10(255**2 / 100))


def test_ssim_identical_is_one():
    img = photo_arrays()["chelsea"]
    assert ssim(img, img) == pytest.approx(1.0)


def test_ssim_matches_scikit_image_formula():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = photo_arrays()["astronaut"][:64, :64, 0]
    b = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    expected = structural_similarity(
        a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )
    # scikit-image averages over a 5-pixel-cropped full map, ours over the valid region.
    assert ssim(a, b, crop_border=0) == pytest.approx(expected, abs=5e-3)


def test_grayscale_scored_as_is():
    a = photo_arrays()["coffee"][..., 0]
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    assert psnr(a, b) == psnr(a[..., None], b[..., None])


def test_rejects_float_images():
    with pytest.raises(TypeError, match="uint8"):
        psnr(np.zeros((16, 16)), np.zeros((16, 16)))


@needs_set5
def test_bicubic_set5_reference_scores():
    scores = []
    for path in sorted((SET5 / "HR").glob("*.png")):
        hr = mod_crop(np.asarray(Image.open(path).convert("RGB")))
        lr = Image.open(SET5 / "LR_bicubic_X4" / f"{path.stem}x4.png").convert("RGB")
        sr = to_uint8(upsample(np.asarray(lr, dtype=np.float64) / 255.0))
        scores.append(score(sr, hr))
    mean = mean_scores(scores)
    assert mean.psnr_y == pytest.approx(28.42, abs=0.02)
    assert mean.ssim_y == pytest.approx(0.8104, abs=0.002)
