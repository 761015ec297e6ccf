"""Video and image encoding keep the exact frame count and size, and decode back to the same content."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pab.runtime.video import (
    decode_video,
    encode_spritesheet,
    encode_thumbnail,
    encode_video,
    write_video,
)


def _clip(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth gradients brightening over time, with two identical consecutive frames at the end."""
    y, x = np.mgrid[0:height, 0:width]
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        clip[f, ..., 0] = 40 + x * 100 // max(width - 1, 1) + 12 * f
        clip[f, ..., 1] = 40 + y * 160 // max(height - 1, 1)
        clip[f, ..., 2] = 128
    if frames > 2:
        clip[-1] = clip[-2]
    return clip


@pytest.mark.parametrize("shape", [(8, 16, 16), (9, 32, 32), (1, 16, 16), (5, 15, 17), (3, 24, 40)])
def test_mp4_round_trip_keeps_frame_count_and_size(shape):
    clip = _clip(*shape)
    data = encode_video(clip, fps=8, fmt="mp4")
    assert data[4:8] == b"ftyp"
    decoded = decode_video(data)
    assert decoded.shape == clip.shape
    assert np.abs(decoded.astype(int) - clip).mean() < 6  # lossy (4:2:0 chroma at tiny sizes), but the same picture
    errors = np.abs(decoded[:, None].astype(int) - clip[None]).mean(axis=(2, 3, 4))  # [decoded, original]
    unique = clip.shape[0] - (1 if clip.shape[0] > 2 else 0)  # the last two frames are identical
    assert (errors[:unique].argmin(axis=1) == np.arange(unique)).all()  # every frame is in its place


def test_gif_round_trip_keeps_every_frame_and_few_colours_nearly_exact():
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    clip = palette[rng.integers(0, 40, size=(6, 15, 17))]
    clip[3] = clip[2]  # Pillow's GIF writer would merge these two into one frame
    data = encode_video(clip, fps=10, fmt="gif")
    assert data[:6] == b"GIF89a"
    decoded = decode_video(data)
    assert decoded.shape == clip.shape
    assert np.array_equal(decoded[3], decoded[2])
    # ffmpeg builds the palette in OkLab: a 40-colour clip comes back within one level per channel
    assert np.abs(decoded.astype(int) - clip).max() <= 2


def test_different_clips_encode_differently():
    a, b = _clip(4, 16, 16), 255 - _clip(4, 16, 16)
    assert np.abs(decode_video(encode_video(a)).astype(int) - decode_video(encode_video(b))).mean() > 50


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("webp", b"RIFF"), ("jpeg", b"\xff\xd8")])
def test_thumbnail_is_the_middle_frame(fmt, magic):
    clip = _clip(5, 16, 24)
    clip[2] = 200  # the middle frame is a flat colour, unlike its neighbours
    data = encode_thumbnail(clip, fmt=fmt)
    assert data.startswith(magic)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert image.shape == (16, 24, 3)
    assert np.abs(image.astype(int) - 200).max() <= (0 if fmt == "png" else 3)


def test_spritesheet_tiles_every_frame_in_order():
    clip = np.stack([np.full((4, 6, 3), 10 * i, dtype=np.uint8) for i in range(5)])
    sheet = np.asarray(Image.open(io.BytesIO(encode_spritesheet(clip, fmt="png", columns=2))))
    assert sheet.shape == (3 * 4, 2 * 6, 3)
    for i in range(5):
        r, c = divmod(i, 2)
        assert (sheet[r * 4 : (r + 1) * 4, c * 6 : (c + 1) * 6] == 10 * i).all()
    assert (sheet[8:, 6:] == 0).all()  # the unused cell stays black


@pytest.mark.parametrize("suffix,magic", [(".mp4", b"ftyp"), (".gif", b"GIF8")])
def test_write_video_chooses_format_by_suffix(tmp_path, suffix, magic):
    path = write_video(_clip(3, 16, 16), tmp_path / f"clip{suffix.upper()}", fps=4)
    assert magic in path.read_bytes()[:8]
    assert decode_video(path.read_bytes()).shape == (3, 16, 16, 3)


def test_write_video_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"suffix.*\.mp4"):
        write_video(_clip(2, 16, 16), tmp_path / "clip.avi")


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((2, 16, 16), np.uint8), r"\[F, H, W, 3\]"),
        (np.zeros((2, 16, 16, 3), np.float32), "uint8"),
        (np.zeros((0, 16, 16, 3), np.uint8), "at least one"),
    ],
)
def test_bad_frames_are_rejected(frames, match):
    with pytest.raises(ValueError, match=match):
        encode_video(frames)


def test_bad_format_and_fps_are_rejected():
    clip = _clip(2, 16, 16)
    with pytest.raises(ValueError, match="fmt must be one of"):
        encode_video(clip, fmt="avi")
    with pytest.raises(ValueError, match="fps"):
        encode_video(clip, fps=0)
    with pytest.raises(ValueError, match="fmt must be one of"):
        encode_thumbnail(clip, fmt="bmp")


def test_decode_rejects_non_video_bytes():
    with pytest.raises(ValueError, match="not an mp4, gif or webm"):
        decode_video(b"hello world, not a video")


def test_ffmpeg_starts_without_a_preexec_fn(monkeypatch):
    """A `preexec_fn` makes Python fork() (not vfork()) and run gRPC's at-fork child handler, which aborts 1-4% of the
    children of a process with live gRPC traffic - every Ray worker - before they exec (grpc/grpc#43055): encoding and
    decoding must start ffmpeg without one."""
    import subprocess

    spawned: list[dict] = []
    popen = subprocess.Popen

    def recording(*args, **kwargs):
        spawned.append(kwargs)
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording)
    clip = _clip(4, 16, 16)
    assert decode_video(encode_video(clip, fps=4, fmt="gif")).shape == clip.shape
    assert len(spawned) >= 2 and all(kwargs.get("preexec_fn") is None for kwargs in spawned)
