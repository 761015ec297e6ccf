"""Job records and finished videos in a directory or any fsspec URL, so that no replica's memory is the only copy.

Layout under the root, one folder per job so a delete is one recursive remove:

    videos/<id>/request.json   written once by the ingress that accepted the job (`JobRecord`)
    videos/<id>/state.json     status and progress (`JobState`): the generator and its rank-0 worker write it while
                               the job runs; the ingress writes it only to record a failure the generator could not
    videos/<id>/video.mp4, thumbnail.webp, spritesheet.jpeg
    models/<name>.json         the served model's card, published by each generator replica as it starts

Job ids start with their creation time in hex, so listing the folder in name order lists jobs in creation order and a
page reads only the records it returns.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Literal
from urllib.parse import quote

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict

from pab.runtime.request.request import GenerationRequest
from pab.runtime.stats import GenerationStats

from .schemas import CONTENT_FORMATS

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
_ID_PREFIX = "video_"


def new_job_id() -> str:
    """`video_` + creation time in microseconds (13 hex digits, sorts in time order) + 48 random bits."""
    return f"{_ID_PREFIX}{time.time_ns() // 1000:013x}{secrets.token_hex(6)}"


class JobRecord(BaseModel):
    """What was asked: the request with every default resolved, so a re-dispatched job renders the same video."""

    model_config = ConfigDict(frozen=True)

    id: str
    created_at: int
    submitted_at: float
    request: GenerationRequest


class JobState(BaseModel):
    r"""
    Where the job is. No state file at all means `queued`.

    Args:
        attempt: How many runs of the job have started (a job lost with its worker runs again, up to
            `max_attempts`).
        runner: The generator replica that runs (or last ran) the job.
        lease_until: Until when `runner` holds the job; it renews the lease with every progress write, so a job
            whose runner died can be taken over once the lease has passed.
    """

    status: JobStatus = "queued"
    progress: int = 0
    attempt: int = 0
    runner: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    stats: GenerationStats | None = None
    updated_at: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def remaining_s(self, now: float) -> float | None:
        """Estimated seconds until the job's last denoising step, from its progress rate; None while unknown.

        The rate is measured up to the progress write (`updated_at`), not up to `now`, so a progress value that is
        a write interval old does not make the job look slower than it is.
        """
        if self.status != "in_progress" or self.started_at is None or self.progress <= 0:
            return None
        measured_at = self.updated_at if self.updated_at > self.started_at else now
        per_percent = max(measured_at - self.started_at, 0.0) / self.progress
        return max(per_percent * (100 - self.progress) - max(now - measured_at, 0.0), 0.0)

    def poll_after_ms(self, now: float, lo_ms: int, hi_ms: int) -> int:
        """How long a client should wait before polling again: half the estimated remaining time, within
        [lo_ms, hi_ms]; `hi_ms` while nothing is known yet."""
        remaining = self.remaining_s(now)
        if remaining is None:
            return hi_ms
        return int(min(max(1000 * remaining / 2, lo_ms), hi_ms))


class JobStore:
    r"""
    A job store rooted at `url`: a local path (`~` expanded) or any fsspec URL such as `s3://bucket/prefix`.

    Every writer writes whole files; local writes go through a rename so readers never see half a file.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        if "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self._fs, root = fsspec.core.url_to_fs(url)
        self._root = root.rstrip("/")
        self._local = isinstance(self._fs, LocalFileSystem)
        self._fs.makedirs(self._dir(), exist_ok=True)

    # paths -----------------------------------------------------------------------------------------------------
    def _dir(self, job_id: str | None = None) -> str:
        base = f"{self._root}/videos"
        if job_id is None:
            return base
        if not job_id.startswith(_ID_PREFIX) or not job_id[len(_ID_PREFIX) :].isalnum():
            raise KeyError(job_id)  # never let an id from a URL walk outside the store
        return f"{base}/{job_id}"

    def _path(self, job_id: str, name: str) -> str:
        return f"{self._dir(job_id)}/{name}"

    # raw I/O ---------------------------------------------------------------------------------------------------
    def _write(self, path: str, data: bytes) -> None:
        if self._local:
            tmp = f"{path}.{secrets.token_hex(4)}.tmp"
            self._fs.pipe_file(tmp, data)
            os.replace(tmp, path)
        else:
            self._fs.pipe_file(path, data)

    def _read(self, path: str) -> bytes | None:
        try:
            return self._fs.cat_file(path)
        except FileNotFoundError:
            return None

    # jobs ------------------------------------------------------------------------------------------------------
    def create(self, record: JobRecord) -> None:
        self._fs.makedirs(self._dir(record.id), exist_ok=True)
        self._write(self._path(record.id, "request.json"), record.model_dump_json().encode())

    def exists(self, job_id: str) -> bool:
        try:
            return self._fs.exists(self._path(job_id, "request.json"))
        except KeyError:
            return False

    def record(self, job_id: str) -> JobRecord | None:
        try:
            raw = self._read(self._path(job_id, "request.json"))
        except KeyError:
            return None
        return None if raw is None else JobRecord.model_validate_json(raw)

    def state(self, job_id: str) -> JobState:
        """The job's state; `queued` when nobody has written one yet."""
        raw = self._read(self._path(job_id, "state.json"))
        return JobState() if raw is None else JobState.model_validate_json(raw)

    def set_state(self, job_id: str, state: JobState) -> bool:
        """Write the state unless the job was deleted meanwhile (returns whether it was written)."""
        if not self.exists(job_id):
            return False
        state = state.model_copy(update={"updated_at": time.time()})
        try:
            self._write(self._path(job_id, "state.json"), state.model_dump_json().encode())
        except FileNotFoundError:  # deleted between the check and the write: never bring its folder back
            return False
        return True

    def claim(self, job_id: str, attempt: int) -> bool:
        """Take attempt number `attempt` of a job: True for exactly one caller (an exclusive create), so two
        replicas, or two ingress replicas dispatching after a restart, never start the same attempt twice."""
        path = self._path(job_id, f"claims/{attempt}")
        try:
            self._fs.makedirs(self._path(job_id, "claims"), exist_ok=True)
            with self._fs.open(path, "xb") as f:
                f.write(str(time.time()).encode())
        except (FileExistsError, FileNotFoundError):
            return False
        return True

    def claimed(self, job_id: str, attempt: int) -> bool:
        """Whether some runner took attempt `attempt` (a runner that finds a later attempt claimed has lost the
        job and must not record its result)."""
        return self._fs.exists(self._path(job_id, f"claims/{attempt}"))

    def put_content(self, job_id: str, variant: str, data: bytes) -> None:
        self._write(self._path(job_id, f"{variant}.{CONTENT_FORMATS[variant]}"), data)

    def content(self, job_id: str, variant: str) -> bytes | None:
        return self._read(self._path(job_id, f"{variant}.{CONTENT_FORMATS[variant]}"))

    def delete(self, job_id: str) -> bool:
        if not self.exists(job_id):
            return False
        self._fs.rm(self._dir(job_id), recursive=True)
        return True

    # model cards -----------------------------------------------------------------------------------------------
    def _card_path(self, name: str) -> str:
        return f"{self._root}/models/{quote(name, safe='')}.json"

    def put_card(self, name: str, card_json: str) -> None:
        """Publish a served model's card (`pab.runtime.request.card.ModelCard` JSON) for the ingress to read."""
        self._fs.makedirs(f"{self._root}/models", exist_ok=True)
        self._write(self._card_path(name), card_json.encode())

    def card(self, name: str) -> str | None:
        raw = self._read(self._card_path(name))
        return None if raw is None else raw.decode()

    def ids(self) -> list[str]:
        """Every job id, oldest first."""
        self._fs.invalidate_cache(self._dir())
        try:
            names = self._fs.ls(self._dir(), detail=False)
        except FileNotFoundError:
            return []
        ids = (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
        return sorted(i for i in ids if i.startswith(_ID_PREFIX))

    def page(self, *, after: str | None, limit: int, order: Literal["asc", "desc"]) -> tuple[list[JobRecord], bool]:
        """One page of records after the cursor id in the given order, and whether more follow."""
        ids = self.ids()
        if order == "desc":
            ids.reverse()
        if after is not None:
            ids = [i for i in ids if (i > after if order == "asc" else i < after)]
        records: list[JobRecord] = []
        for job_id in ids:
            if len(records) == limit:
                return records, True
            record = self.record(job_id)  # None when deleted since the listing
            if record is not None:
                records.append(record)
        return records, False


class ProgressThrottle:
    """Which progress reports of a running job are worth a store write: the step fraction as a percentage, at most
    every `interval_s` seconds (the last step always), never backwards, capped at 99 so only a stored video reads
    as 100. `__call__` returns the percentage to write, or None to skip."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._last_write = float("-inf")
        self._last_progress = -1

    def __call__(self, step: int, total: int) -> int | None:
        progress = min(99, int(99 * step / max(total, 1)))
        now = time.monotonic()
        if progress <= self._last_progress or (step < total and now - self._last_write < self._interval):
            return None
        self._last_write, self._last_progress = now, progress
        return progress
