"""The playground: a web page served by the ingress itself, to try the model and see what PAB did.

`GET /playground` is one static page (`serve_app/static/`: HTML, JS, CSS; no build step, nothing from a CDN, a
Content-Security-Policy that allows this origin only) that talks to the Videos API like any client: it creates jobs,
follows their per-step progress, plays the mp4, shows the thumbnail, spritesheet and PAB stats, lists and deletes
recent jobs. `GET /playground/model` gives it what the controls need from the model card, with the same auth as the
API. `GET /` sends a browser to the page. Paths are relative to the app's route prefix (Serve's `root_path`), so the
page works under any prefix.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

import serve_app
from pab.geometry import patch_sizes, pixel_multiple, spatial_scale, temporal_scale
from pab.presets import PRESET_NAMES
from serve_app.auth import Authenticator
from serve_app.cards import CardCache
from serve_app.config import AppConfig
from serve_app.errors import not_found
from serve_app.quality import PresetChooser

STATIC_DIR = Path(serve_app.__file__).resolve().parent / "static"
ASSETS: dict[str, str] = {"app.js": "text/javascript", "app.css": "text/css"}
"""The files the page loads besides itself (nothing else under the static directory is served)."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
       "connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'")
BASE_MARKER = '<base href="/">'

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Playground:
    r"""
    What the page's model route reads: the ingress's card cache, its authenticator and config, and the preset a
    request naming none resolves with (the quality watch's fallback). Set on `app.state.playground` by the ingress.
    """

    cards: CardCache
    auth: Authenticator
    config: AppConfig
    presets: PresetChooser

    def model(self) -> dict[str, Any]:
        """The controls' ranges and defaults, from the served model's card and the server's limits."""
        card = self.cards.get()
        view = card.pipeline_view()
        _, patch_h, _ = patch_sizes(view.transformer)
        status = self.presets.status()
        return {
            "model": card.name,
            "defaults": card.defaults,
            "vocabulary": card.geometry.get("prompt_vocabulary"),
            "size_step": math.lcm(spatial_scale(view) * patch_h, pixel_multiple(view)),  # what resolve accepts
            "frames": {"fixed": view.transformer.config.get("video_length"), "temporal_scale": temporal_scale(view)},
            "presets": list(PRESET_NAMES) if card.adapter is not None else ["none"],
            "default_preset": self.config.pab_preset,
            "preset_now": self.presets.default_preset(),
            "limits": self.config.limits.model_dump(),
            "auth": self.auth.enabled,
            "quality": status.model_dump(mode="json") if status is not None else None,
        }


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/")
async def root(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{_root(request)}/playground", status_code=307)


@router.get("/playground")
async def page(request: Request) -> HTMLResponse:
    html = (STATIC_DIR / "index.html").read_text().replace(BASE_MARKER, f'<base href="{_root(request)}/">', 1)
    return HTMLResponse(html, headers={"content-security-policy": CSP, "cache-control": "no-cache"})


@router.get("/playground/model")
async def model(request: Request) -> dict[str, Any]:
    playground: Playground = request.app.state.playground
    playground.auth.tenant_for(request.headers.get("authorization"))
    return playground.model()


@router.get("/playground/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise not_found("playground file", name)
    return Response((STATIC_DIR / name).read_bytes(), media_type=ASSETS[name], headers={"cache-control": "no-cache"})
