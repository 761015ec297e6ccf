"""The workers' side of the quality watch (`deployments.quality_watch`): keep recently served frames, and re-run a
served request with PAB off to score it against the full model's video.

Scores are `pab.runtime.tools.quality.psnr` / `ssim` of the raw uint8 frames, exactly what `bench/quality.py` and
`pab eval` compute, so a live sample and an offline figure for the same request agree. The served frames come from
`ServedFrames` (no second PAB run) unless they were evicted, in which case the served request runs again: it is
resolved and seeded, and the engine's batches are batch-invariant, so that run reproduces the served video.

Every rank runs the same generations (they are one sequence-parallel group), so every rank decides hit or miss
identically: the budget counts the bytes a request's frames take (from its size), and each rank keeps the same keys.
Only rank 0 keeps the frames themselves. Importing this module needs no torch (the generator replica imports it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Sequence

from pab.runtime.request.request import GenerationRequest


def request_key(request: GenerationRequest) -> str:
    """One resolved request's identity (seed and PAB config included)."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def frame_bytes(request: GenerationRequest) -> int:
    """What the uint8 RGB frames of a resolved request take, known on every rank before they exist."""
    return int(request.num_frames) * int(request.height) * int(request.width) * 3


def runs_pab(request: GenerationRequest) -> bool:
    """Whether the request broadcasts anything (a `none` config cannot differ from the full model)."""
    return bool(request.pab) and request.pab.get("name") != "none"


class ServedFrames:
    r"""
    The frames of the most recent PAB generations, least recently served dropped first, within a byte budget.

    Args:
        max_bytes: The budget; a video larger than it is not kept.
        keep_frames: Whether to hold the frames (rank 0) or only the keys (the other ranks).
    """

    def __init__(self, max_bytes: int, keep_frames: bool) -> None:
        self._max, self._keep_frames = max_bytes, keep_frames
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._bytes = 0

    @classmethod
    def for_config(cls, config: Any, rank: int) -> "ServedFrames | None":
        """The cache of one worker of `config` (an `AppConfig`), or None while the watch is off."""
        watch = config.quality_watch
        if not watch.enabled:
            return None
        return cls(int(watch.frame_cache_mb * 2**20), keep_frames=rank == 0)

    def keep_all(self, results: Sequence[Any]) -> None:
        """Keep the frames of a batch's `GenerationResult`s that ran with PAB."""
        for result in results:
            if runs_pab(result.request):
                self.keep(result.request, result.frames)

    def keep(self, request: GenerationRequest, frames: Any) -> None:
        size = frame_bytes(request)
        if size > self._max:
            return
        key = request_key(request)
        if key in self._entries:
            self._bytes -= self._entries.pop(key)[0]
        self._entries[key] = (size, frames if self._keep_frames else None)
        self._bytes += size
        while self._bytes > self._max:
            self._bytes -= self._entries.popitem(last=False)[1][0]

    def holds(self, request: GenerationRequest) -> bool:
        return request_key(request) in self._entries

    def get(self, request: GenerationRequest) -> Any:
        entry = self._entries.get(request_key(request))
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        return len(self._entries)


def measure(generator: Any, request: GenerationRequest, served: ServedFrames | None, probe_pab: dict | None,
            on_step: Callable[[int, int], None]) -> dict[str, Any]:
    """Score the served video of `request` (and, with `probe_pab`, the same request under that config) against the
    full model's video from the same seed. Runs on every rank of the group; the scores are rank 0's."""
    from pab.runtime.tools.quality import psnr, ssim

    def run(pab: dict[str, Any]) -> Any:
        return generator.generate(request.model_copy(update={"pab": pab}), on_step=on_step).frames

    full = run(generator.resolve_pab("none").to_dict())
    reproduced = runs_pab(request) and (served is None or not served.holds(request))
    if not runs_pab(request):
        frames = None  # served without PAB (a fallback of "none"): nothing to score but the probe
    else:
        frames = run(request.pab) if reproduced else served.get(request)

    def score(video: Any) -> dict[str, float] | None:
        return None if video is None else {"psnr_db": psnr(video, full), "ssim": ssim(video, full)}

    return {"served": score(frames), "reproduced": reproduced,
            "probe": score(run(probe_pab)) if probe_pab is not None else None}
