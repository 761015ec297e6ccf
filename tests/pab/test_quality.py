"""PSNR, SSIM and the objective prompt-following check on constructed videos with known answers."""

import math

import numpy as np
import pytest
import torch

from pab.runtime.tinyvideo.objective import (
    accuracy, centroid_direction, dominant_colour, objective_check, shape_of, video_statistics,
)
from pab.runtime.tools.quality import psnr, ssim
from pab.runtime.tinyvideo.data import render_clip


def _video(colour="red", shape="square", direction="right", start=(4.0, 8.0)) -> np.ndarray:
    clip = render_clip(colour, shape, direction, start)
    return (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_identical_clips_infinite_psnr_and_ssim_one():
    v = _video()
    assert psnr(v, v.copy()) == math.inf
    assert ssim(v, v.copy()) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_known_error():
    a = np.zeros((2, 8, 8, 3), dtype=np.float64)
    b = a + 0.1  # MSE 0.01 on data range 1 -> 20 dB
    assert psnr(b, a) == pytest.approx(20.0)
    assert psnr((a * 255).astype(np.uint8), np.full_like(a, 51, dtype=np.uint8)) == pytest.approx(
        10 * math.log10(1 / 0.2**2))


def test_ssim_drops_with_noise_and_is_symmetric():
    v = _video().astype(np.float64) / 255
    noisy = np.clip(v + np.random.default_rng(0).normal(0, 0.2, v.shape), 0, 1)
    s = ssim(noisy, v)
    assert 0 < s < 0.9
    assert s == pytest.approx(ssim(v, noisy))
    assert ssim(np.clip(v + np.random.default_rng(0).normal(0, 0.02, v.shape), 0, 1), v) > s


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 4, 3)))


@pytest.mark.parametrize("direction,start", [("left", (12.0, 8.0)), ("right", (4.0, 8.0)), ("up", (8.0, 12.0)),
                                             ("down", (8.0, 4.0))])
def test_known_shift_gives_the_right_direction(direction, start):
    assert centroid_direction(_video(direction=direction, start=start)) == direction


def test_direction_from_a_hand_shifted_blob():
    v = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    for f in range(4):
        v[f, 6:9, 10 - 2 * f: 13 - 2 * f] = (0, 0, 255)  # moves 2 px left per frame
    assert centroid_direction(v) == "left"
    assert dominant_colour(v) == "blue"
    static = np.repeat(v[:1], 4, axis=0)
    assert centroid_direction(static) is None  # no motion: no direction claimed
    assert centroid_direction(np.zeros_like(v)) is None and dominant_colour(np.zeros_like(v)) is None


@pytest.mark.parametrize("colour", ["red", "green", "blue", "yellow"])
@pytest.mark.parametrize("shape", ["square", "disc", "triangle"])
def test_colour_and_shape(colour, shape):
    v = _video(colour=colour, shape=shape)
    assert dominant_colour(v) == colour
    assert shape_of(v) == shape


def test_objective_check_and_accuracy():
    right = objective_check(_video("green", "disc", "right"), ("green", "disc", "right"))
    wrong = objective_check(_video("green", "disc", "right"), ("red", "disc", "left"))
    assert right.ok and right.shape_ok
    assert not wrong.ok and not wrong.colour_ok and not wrong.direction_ok and wrong.shape_ok
    acc = accuracy([right, wrong])
    assert acc == {"accuracy": 0.5, "colour": 0.5, "direction": 0.5, "shape": 1.0, "n": 2}
    with pytest.raises(ValueError, match="at least one"):
        accuracy([])


def test_float_tensor_input_in_unit_range():
    v = torch.from_numpy(_video("yellow", "triangle", "up", (8.0, 12.0))).float() / 255
    r = objective_check(v, ("yellow", "triangle", "up"))
    assert r.ok and r.shape_ok


def test_video_statistics_follow_the_blob():
    v = _video("red", "square", "right", (4.0, 8.0))
    stats = video_statistics(v)
    assert stats["centroid_x"] == pytest.approx([3.5 + 2.5 * f for f in range(4)], abs=1e-6)  # pixel centres at i
    assert stats["centroid_y"] == pytest.approx([7.5] * 4, abs=1e-6)
    assert stats["channel_mean"][0] == pytest.approx(36 / 256, abs=1e-3) and stats["channel_mean"][1] == 0
    blank = video_statistics(np.zeros_like(v))
    assert all(math.isnan(x) for x in blank["centroid_x"])
