"""`input_reference` (image-to-video) off the wire: where the bytes come from, what they may be, and the fitted image.

Checked once, at POST, before a job exists; every refusal is a 400 naming `input_reference` and the limit:

1. source: a multipart file part (what `client.videos.create(input_reference=open(...))` sends), a data URL string,
   or `{"image_url": "data:..."}` (the SDK sends that as the form fields `input_reference[image_url]`). A remote
   `http(s)` URL only when `ReferenceConfig.allowed_url_hosts` names its host: fetched once, no redirects followed,
   with a timeout and at most `max_bytes` read.
2. bytes: at most `max_bytes`; PNG, JPEG or WebP by their magic bytes (not by a declared content type).
3. header: width x height at most `max_pixels`, read before any pixel is decoded (PIL's decompression-bomb warning
   and error are refused the same way); an animated image gives its first frame.
4. pixels: decoded, turned upright by its EXIF orientation, alpha flattened onto black (the background of the
   embedded model's videos), RGB.
5. fit (the policy): scale to cover the request's width x height keeping the aspect ratio, centre-crop the excess
   (Lanczos resampling; an image already of the size is kept as it is, pixel for pixel).

The result is a `ReferenceImage` (lossless PNG, sha256) that the job record keeps, so a re-run sees the same pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.parse
import urllib.request
import warnings
import numpy as np
from PIL import Image, ImageOps

from pab.runtime.request.conditioning import ReferenceImage

from .config import ReferenceConfig
from .errors import InvalidRequestError, invalid
from .schemas import ImageReference

FIELD = "input_reference"
FORMATS = ("PNG", "JPEG", "WEBP")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))


def _bad(message: str, code: str = "invalid_value") -> InvalidRequestError:
    return invalid(f"{FIELD}: {message}", param=FIELD, code=code)


def check_size(n: int, config: ReferenceConfig) -> None:
    """Refuse more than `max_bytes` (an upload is read only that far, so `n` may be `max_bytes + 1`)."""
    if n > config.max_bytes:
        raise _bad(f"the image is larger than the limit of {config.max_bytes} bytes (references.max_bytes)",
                   code="image_too_large")


def reference_bytes(value: bytes | str | ImageReference, config: ReferenceConfig) -> bytes:
    """The encoded image a create body's `input_reference` names: upload bytes, a data URL, `{"image_url": ...}`,
    or an allowed remote URL."""
    if isinstance(value, (bytes, bytearray)):
        check_size(len(value), config)
        return bytes(value)
    url = value.image_url if isinstance(value, ImageReference) else value
    if url[:5].lower() == "data:":
        return _data_url(url, config)
    return fetch(url, config)


def _data_url(url: str, config: ReferenceConfig) -> bytes:
    """`data:image/...;base64,<payload>`: the payload's size is checked before it is decoded."""
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise _bad("a data URL must be base64 encoded: data:image/png;base64,...")
    check_size(len(payload) * 3 // 4 - payload.count("=", len(payload) - 2), config)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the data URL's payload is not valid base64") from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        raise _bad(f"the image URL redirects (HTTP {code}); send the final URL")


def fetch(url: str, config: ReferenceConfig) -> bytes:
    """An http(s) image from an allowed host, at most `max_bytes` of it, within `fetch_timeout_s`."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise _bad("must be an image file upload, a data URL (data:image/png;base64,...) or an http(s) URL")
    if host.lower() not in {h.lower() for h in config.allowed_url_hosts}:
        raise _bad(f"remote image URLs are not fetched from {host[:100]!r} (the server's "
                   "references.allowed_url_hosts does not name it); upload the image or send a data URL",
                   code="unsupported_parameter")
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(url, timeout=config.fetch_timeout_s) as response:
            data = response.read(config.max_bytes + 1)
    except InvalidRequestError:
        raise
    except urllib.error.HTTPError as exc:
        raise _bad(f"fetching the image URL answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts and resets are OSErrors
        raise _bad(f"could not fetch the image URL within {config.fetch_timeout_s:g} s: {exc}") from None
    check_size(len(data), config)
    return data


def sniff(data: bytes) -> str:
    """The format by magic bytes: PNG, JPEG or WEBP, else a 400."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise _bad("not a PNG, JPEG or WebP image", code="invalid_image")


def decode(data: bytes, config: ReferenceConfig) -> np.ndarray:
    """Encoded bytes -> upright RGB uint8 [H, W, 3], alpha flattened onto black, with every check above."""
    fmt = sniff(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                check_pixels(image.size, config)
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image)
                return flatten(upright)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL's check at open
            raise _bad(f"the image declares too many pixels, over the limit of {config.max_pixels} pixels "
                       f"(references.max_pixels): {exc}", code="image_too_large") from None
        except InvalidRequestError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's errors for truncated or corrupt files
            raise _bad(f"the {fmt} image cannot be decoded: {exc}", code="invalid_image") from None


def check_pixels(size: tuple[int, int], config: ReferenceConfig) -> None:
    """width x height as the header declares them, against `max_pixels`."""
    if size[0] * size[1] > config.max_pixels:
        raise _pixels_error(size, config)


def _pixels_error(size: tuple[int, int], config: ReferenceConfig) -> InvalidRequestError:
    return _bad(f"the image declares {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the limit of "
                f"{config.max_pixels} pixels (references.max_pixels)", code="image_too_large")


def flatten(image: Image.Image) -> np.ndarray:
    """RGB uint8, any alpha composited onto black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to cover width x height (aspect kept), centre-crop the excess; unchanged when already that size."""
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    scale = max(width / w, height / h)
    crop_w, crop_h = width / scale, height / scale  # the source region that maps onto the target
    left, top = (w - crop_w) / 2, (h - crop_h) / 2
    image = Image.fromarray(rgb, mode="RGB")
    fitted = image.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
    return np.asarray(fitted, dtype=np.uint8)


def reference_image(data: bytes, width: int, height: int, config: ReferenceConfig) -> ReferenceImage:
    """Checked, decoded and fitted: what the job record keeps."""
    return ReferenceImage.from_rgb(fit(decode(data, config), width, height))
