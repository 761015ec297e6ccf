"""`input_reference` at the edge (`serve_app.references`): sources, byte and header limits, decompression bombs,
EXIF orientation, alpha, the cover-and-centre-crop fit, and remote URLs (refused unless allowed; fetched with a byte
cap, a timeout and no redirects from a 127.0.0.1 server)."""

from __future__ import annotations

import base64
import http.server
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from serve_app.config import AppConfig, ReferenceConfig
from serve_app.errors import APIError
from serve_app.references import decode, fit, reference_bytes, reference_image
from serve_app.schemas import ImageReference

CONFIG = ReferenceConfig()


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height, with no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _refused(exc: pytest.ExceptionInfo, *words: str) -> None:
    assert exc.value.status_code == 400 and exc.value.param == "input_reference"
    for word in words:
        assert word in exc.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_decode_to_rgb(fmt):
    image = Image.new("RGB", (12, 10), (200, 40, 40))
    rgb = decode(_encode(image, fmt, **({"quality": 100} if fmt != "PNG" else {})), CONFIG)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - [200, 40, 40]).max() <= 8  # JPEG/WebP are lossy; PNG exact


@pytest.mark.parametrize("data", [b"not an image at all", b"GIF89a" + b"\0" * 20, b""])
def test_what_is_not_png_jpeg_or_webp_is_refused(data):
    with pytest.raises(APIError) as exc:
        decode(data, CONFIG)
    _refused(exc, "not a PNG, JPEG or WebP image")


def test_a_truncated_png_is_refused_not_a_server_error():
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(APIError) as exc:
        decode(data[: len(data) // 2], CONFIG)
    _refused(exc, "cannot be decoded")


def test_a_50_mb_upload_is_refused_with_the_limit():
    with pytest.raises(APIError) as exc:
        reference_bytes(b"\0" * (50 * 1024 * 1024), CONFIG)
    _refused(exc, str(CONFIG.max_bytes), "references.max_bytes")
    payload = base64.b64encode(b"\0" * (CONFIG.max_bytes + 3)).decode()
    with pytest.raises(APIError) as exc:  # a data URL's size is checked before it is decoded
        reference_bytes(f"data:image/png;base64,{payload}", CONFIG)
    _refused(exc, "references.max_bytes")


def test_a_30000x30000_png_header_is_refused_before_decoding():
    data = _png_header(30000, 30000)
    assert len(data) < 100
    with pytest.raises(APIError) as exc:
        decode(data, CONFIG)
    _refused(exc, "900000000 pixels", str(CONFIG.max_pixels), "references.max_pixels")
    # with our limit out of the way, PIL's own decompression-bomb guard is still a 400, never a 500
    with pytest.raises(APIError) as exc:
        decode(data, ReferenceConfig(max_pixels=10**12))
    _refused(exc, "900000000 pixels", "decompression bomb")


def test_our_pixel_limit_reads_the_header_of_a_moderate_image():
    with pytest.raises(APIError) as exc:
        decode(_png_header(300, 200), ReferenceConfig(max_pixels=300 * 200 - 1))
    _refused(exc, "300x200")


def test_exif_orientation_is_applied():
    wide = np.zeros((2, 4, 3), np.uint8)
    wide[0, 0] = (255, 0, 0)  # red at the top left
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rgb = decode(_encode(image, "PNG", exif=exif), CONFIG)
    assert rgb.shape == (4, 2, 3)
    assert tuple(rgb[0, 1]) == (255, 0, 0)  # the top left went to the top right


def test_alpha_is_flattened_onto_black():
    rgba = Image.new("RGBA", (2, 2), (255, 100, 0, 128))
    rgb = decode(_encode(rgba), CONFIG)
    assert tuple(rgb[0, 0]) == (128, 50, 0)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([255, 255, 255] * 256)
    palette.info["transparency"] = 0
    assert decode(_encode(palette), CONFIG).max() == 0


def test_fit_scales_to_cover_then_centre_crops():
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, 16:32] = 255  # white centre third, black sides
    out = fit(wide, 16, 16)
    assert out.shape == (16, 16, 3)
    assert out.min() >= 250  # the sides were cropped away
    tall = np.zeros((64, 32, 3), np.uint8)
    tall[:12] = 255  # white top rows: cropped off by the centre crop of a 2:1 image to 1:1 (rows 16..48 kept)
    out = fit(tall, 16, 16)
    assert out.shape == (16, 16, 3) and out.max() <= 2
    same = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert fit(same, 16, 16) is same  # already the size: pixel for pixel
    assert fit(np.full((4, 4, 3), 77, np.uint8), 16, 8).shape == (8, 16, 3)  # upscales too


def test_data_url_and_image_url_object_give_the_same_fitted_reference():
    data = _encode(Image.new("RGB", (32, 32), (0, 0, 255)))
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    a = reference_image(reference_bytes(url, CONFIG), 16, 16, CONFIG)
    b = reference_image(reference_bytes(ImageReference(image_url=url), CONFIG), 16, 16, CONFIG)
    assert a == b and (a.width, a.height) == (16, 16)
    assert tuple(a.rgb()[5, 5]) == (0, 0, 255)
    for bad, words in (("data:image/png,rawbytes", "base64"), ("data:image/png;base64,@@@@", "not valid base64")):
        with pytest.raises(APIError) as exc:
            reference_bytes(bad, CONFIG)
        _refused(exc, words)


@pytest.mark.parametrize("url", ["https://images.example.com/cat.png", "http://127.0.0.1:9/x.png", "ftp://h/x.png",
                                 "not a url", "http://[::1/x"])
def test_remote_urls_are_refused_unless_the_host_is_allowed(url):
    with pytest.raises(APIError) as exc:
        reference_bytes(url, CONFIG)
    _refused(exc)


def test_the_allow_list_is_a_config_field_with_a_description():
    field = AppConfig.model_fields["references"].annotation.model_fields["allowed_url_hosts"]
    assert field.description and AppConfig().references.allowed_url_hosts == []
    assert AppConfig(references={"allowed_url_hosts": ["127.0.0.1"]}).references.allowed_url_hosts == ["127.0.0.1"]


class _Images(http.server.BaseHTTPRequestHandler):
    png = _encode(Image.new("RGB", (16, 16), (0, 255, 0)))

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/slow.png":
            time.sleep(3)
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
            return
        body = self.png if self.path != "/big.png" else b"\x89PNG\r\n\x1a\n" + b"\0" * 5000
        self.send_response(200 if self.path != "/missing.png" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_allowed_host_is_fetched_with_a_byte_cap_a_timeout_and_no_redirects(image_server):
    config = ReferenceConfig(allowed_url_hosts=["127.0.0.1"], max_bytes=4096, fetch_timeout_s=0.5)
    image = reference_image(reference_bytes(f"{image_server}/ok.png", config), 16, 16, config)
    assert tuple(image.rgb()[0, 0]) == (0, 255, 0)
    for path, words in (("/big.png", "4096 bytes"), ("/moved.png", "redirects"), ("/missing.png", "HTTP 404"),
                        ("/slow.png", "within 0.5 s")):
        with pytest.raises(APIError) as exc:
            reference_bytes(f"{image_server}{path}", config)
        _refused(exc, words)
