"""The quality watch's shared state: PSNR samples per preset, pooled in the job store by every generator replica of
one deployment, and what they decide: whether jobs that name no preset run with the fallback preset.

Generator replicas add samples (`deployments.quality_watch`); ingress replicas read the decision when they resolve a
request (`PresetChooser.default_preset`), so the preset a job runs with is the one its Video shows. Concurrent
writers may each drop the other's latest sample (a read-modify-write of one small file); the median of a window
does not depend on one sample. Torch-free.
"""

from __future__ import annotations

import statistics
import time

from pydantic import BaseModel, ConfigDict, Field

from .config import AppConfig
from .store import JobStore

PSNR_CAP_DB = 100.0
"""PSNR of identical videos (infinite) is recorded as this, so medians, JSON and histograms stay finite."""
RECENT_SAMPLES = 20
STATUS_REFRESH_S = 2.0


def status_key(config: AppConfig) -> str:
    """Where the deployment's quality state lives in the store (beside its model card)."""
    return f"{config.card_key()}.quality"


class QualitySample(BaseModel):
    r"""
    One measurement.

    Args:
        job_id: The job re-run (None for a Python handle call).
        preset: The PAB config measured (its name): the one the job was served with, or for a probe the default
            preset the job would have run with had the fallback not been active.
        psnr_db, ssim: Against the full model's video from the same seed (PSNR capped at `PSNR_CAP_DB`).
        probe: Whether `preset` is a probe rather than what the job was served with.
        at: When it was measured (Unix seconds).
    """

    model_config = ConfigDict(frozen=True)

    job_id: str | None
    preset: str
    psnr_db: float
    ssim: float
    probe: bool = False
    at: float = Field(default_factory=time.time)

    @classmethod
    def of(cls, job_id: str | None, preset: str, psnr_db: float, ssim: float, probe: bool = False) -> "QualitySample":
        return cls(job_id=job_id, preset=preset, psnr_db=min(float(psnr_db), PSNR_CAP_DB), ssim=ssim, probe=probe)


class QualityStatus(BaseModel):
    r"""
    Args:
        default_preset: The resolved name of the server's default preset (e.g. `reference:latte`).
        fallback_preset: What jobs naming no preset run with while `fallback_active`.
        floor_psnr_db: The floor the default preset's rolling median is held to.
        windows: The last samples' PSNR per preset (oldest first).
        fallback_active: Whether the default preset's median is below the floor (with enough samples).
        recent: The last samples, oldest first.
    """

    default_preset: str
    fallback_preset: str
    floor_psnr_db: float
    windows: dict[str, list[float]] = Field(default_factory=dict)
    fallback_active: bool = False
    recent: list[QualitySample] = Field(default_factory=list)
    updated_at: float = 0.0

    def median(self, preset: str) -> float | None:
        values = self.windows.get(preset)
        return statistics.median(values) if values else None

    def add(self, sample: QualitySample, window: int, min_samples: int) -> "QualityStatus":
        """The state with `sample` in its window, and the fallback decided again from the default's median."""
        windows = {**self.windows, sample.preset: [*self.windows.get(sample.preset, []), sample.psnr_db][-window:]}
        status = self.model_copy(update={"windows": windows, "recent": [*self.recent, sample][-RECENT_SAMPLES:],
                                         "updated_at": time.time()})
        default = windows.get(self.default_preset, [])
        if len(default) >= min_samples:
            status = status.model_copy(update={"fallback_active": statistics.median(default) < self.floor_psnr_db})
        return status


def read_status(store: JobStore, key: str) -> QualityStatus | None:
    """The stored state, or None when there is none yet or it cannot be read (the watch then starts afresh)."""
    try:
        raw = store.card(key)
        return QualityStatus.model_validate_json(raw) if raw is not None else None
    except (OSError, ValueError):
        return None


class PresetChooser:
    r"""
    The ingress's view of the fallback: the preset a request that names none resolves with.

    Args:
        store: The job store.
        config: The app config (`pab_preset`, `quality_watch`).
    """

    def __init__(self, store: JobStore, config: AppConfig) -> None:
        self._store, self._config = store, config
        self._key = status_key(config)
        self._status: QualityStatus | None = None
        self._read_at = -float("inf")

    def status(self) -> QualityStatus | None:
        """The shared state, read at most every `STATUS_REFRESH_S`; None while the watch is off or has no samples."""
        if not self._config.quality_watch.enabled:
            return None
        now = time.monotonic()
        if now - self._read_at > STATUS_REFRESH_S:
            self._status, self._read_at = read_status(self._store, self._key), now
        return self._status

    def default_preset(self) -> str:
        status = self.status()
        watch = self._config.quality_watch
        return watch.fallback_preset if status is not None and status.fallback_active else self._config.pab_preset
