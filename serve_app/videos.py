"""The Video object of the OpenAI Videos API, built from a stored job (its record and its state)."""

from __future__ import annotations

from pab.runtime.request.api import video_fields
from pab.runtime.request.card import seconds_label

from .schemas import Video, VideoError
from .store import JobRecord, JobState


def video_object(record: JobRecord, state: JobState, expires_at: int | None = None) -> Video:
    """The API's view of one job: the resolved request under the API's names, its status, and what PAB did."""
    request = record.request
    stats = state.stats
    return Video(
        id=record.id,
        status=state.status,
        progress=state.progress,
        attempt=state.attempt,
        created_at=record.created_at,
        completed_at=state.completed_at,
        expires_at=expires_at,
        seconds=seconds_label(request.num_frames, request.fps),
        error=VideoError(code=state.error["code"], message=state.error["message"]) if state.error else None,
        stats=(stats.pab.model_dump() if stats.pab is not None else {}) if stats is not None else None,
        timings=stats.timings.to_api() if stats is not None else None,
        **video_fields(request),
    )
