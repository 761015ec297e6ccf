"""Frames <-> bytes: mp4 / gif videos and still thumbnails, through the ffmpeg binary that imageio-ffmpeg ships.

Both directions go through ffmpeg so that the exact frame count and size survive: Pillow's GIF writer merges
identical consecutive frames, and imageio's default writer resizes to multiples of 16.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

VIDEO_FORMATS: tuple[str, ...] = ("mp4", "gif")
THUMBNAIL_FORMATS: tuple[str, ...] = ("png", "webp", "jpeg")
MIME_TYPES: dict[str, str] = {
    "mp4": "video/mp4",
    "gif": "image/gif",
    "png": "image/png",
    "webp": "image/webp",
    "jpeg": "image/jpeg",
}

# imageio-ffmpeg starts ffmpeg with `preexec_fn=os.setpgrp` (so a Ctrl-C does not reach it) unless this is set. A
# preexec_fn makes Python fork() instead of vfork(), which runs gRPC's at-fork child handler; grpcio >= 1.80 then
# restarts its poller in the child, finds the fd closed and aborts it before exec (grpc/grpc#43055): in a process
# with live gRPC traffic - every Ray worker - 16 of 400 encodes failed ("ffmpeg wrote no output"), none without it.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

_MP4_CRF = "18"  # visually lossless x264 quality; tiny files at these sizes anyway
# One palette for the whole clip (stats over all frames), no dithering: <= 256-colour input round-trips exactly.
_GIF_FILTER = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=none"


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be a uint8 array of shape [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must hold at least one 1x1 frame, got shape {tuple(frames.shape)}")
    return frames


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 240:
        raise ValueError(f"fps must be a number in (0, 240], got {fps!r}")
    return float(fps)


def encode_video(frames: np.ndarray, fps: float = 8, fmt: str = "mp4") -> bytes:
    """
    Encode uint8 frames [F, H, W, 3] as an mp4 (H.264) or gif, keeping exactly F frames of W x H.

    H.264 in 4:2:0 needs even sizes; odd sizes are stored in 4:4:4 instead of being padded or scaled.
    """
    frames = _check_frames(frames)
    fps = _check_fps(fps)
    _, height, width, _ = frames.shape
    if fmt == "mp4":
        pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        codec, params = "libx264", ["-crf", _MP4_CRF, "-movflags", "+faststart"]
    elif fmt == "gif":
        pix_fmt, codec, params = "pal8", "gif", ["-vf", _GIF_FILTER, "-loop", "0"]
    else:
        raise ValueError(f"fmt must be one of {list(VIDEO_FORMATS)}, got {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="pab-video-") as tmp:
        path = os.path.join(tmp, f"video.{fmt}")
        writer = imageio_ffmpeg.write_frames(
            path,
            (width, height),
            fps=fps,
            codec=codec,
            pix_fmt_in="rgb24",
            pix_fmt_out=pix_fmt,
            quality=None,
            macro_block_size=1,
            output_params=params,
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            raise RuntimeError(f"ffmpeg wrote no {fmt} output for frames of shape {tuple(frames.shape)}")
        return Path(path).read_bytes()


def _suffix_of(data: bytes) -> str:
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[4:8] == b"ftyp":
        return ".mp4"
    if data[:4] == b"\x1aE\xdf\xa3":
        return ".webm"
    raise ValueError("decode_video: bytes are not an mp4, gif or webm video")


def decode_video(data: bytes) -> np.ndarray:
    """Decode video bytes (mp4, gif, webm) to uint8 frames [F, H, W, 3]: for tests and clients."""
    suffix = _suffix_of(data)
    with tempfile.TemporaryDirectory(prefix="pab-video-") as tmp:
        path = os.path.join(tmp, f"video{suffix}")
        Path(path).write_bytes(data)
        reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
        width, height = next(reader)["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    if not frames:
        raise ValueError("decode_video: the video holds no frames")
    return np.stack(frames)


def encode_thumbnail(frames: np.ndarray, fmt: str = "png") -> bytes:
    """Encode the middle frame as a still image (png, webp or jpeg)."""
    frames = _check_frames(frames)
    if fmt not in THUMBNAIL_FORMATS:
        raise ValueError(f"fmt must be one of {list(THUMBNAIL_FORMATS)}, got {fmt!r}")
    buf = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buf, format=fmt.upper())
    return buf.getvalue()


def encode_spritesheet(frames: np.ndarray, fmt: str = "jpeg", columns: int | None = None) -> bytes:
    """Tile all frames row-major into one still image (the Videos API `spritesheet` variant)."""
    frames = _check_frames(frames)
    count, height, width, _ = frames.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    rows = -(-count // columns)
    sheet = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * height : (r + 1) * height, c * width : (c + 1) * width] = frame
    return encode_thumbnail(sheet[None], fmt)


def write_video(frames: np.ndarray, path: str | os.PathLike[str], fps: float = 8) -> Path:
    """Write frames to `path`, choosing mp4 or gif by its suffix."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"path suffix must be one of {['.' + f for f in VIDEO_FORMATS]}, got {path.name!r}")
    path.write_bytes(encode_video(frames, fps=fps, fmt=fmt))
    return path
