"""Job records and finished videos in a directory or any fsspec URL, so that no replica's memory is the only copy.

Layout under the root, one folder per job so a delete is one recursive remove:

    videos/<id>/request.json   written once by the ingress that accepted the job (`JobRecord`): the resolved request
                               with each conditioning payload's metadata only (size, sha256, source id, strength)
    videos/<id>/input_reference.png, remix_source.png
                               the PNG of the reference image / of the remix's source frames (the remix's own copy),
                               written before request.json; only the runner reads them (`runnable`), digest checked
    videos/<id>/state.json     status and progress (`JobState`): the generator and its rank-0 worker write it while
                               the job runs; the ingress writes it only to record a failure the generator could not
    videos/<id>/video.mp4, thumbnail.webp, spritesheet.jpeg
    videos/<id>/frames.png     the exact uint8 frames, stacked top to bottom (lossless): what a remix of it edits
    models/<name>.json         the served model's card, published by each generator replica as it starts
    quarantine/<id>/           bad records moved aside by `pab store check --quarantine`

Job ids start with their creation time in hex, so listing the folder in name order lists jobs in creation order and a
page reads only the records it returns.

A file that cannot be read or parsed never raises out of a read: an unreadable `state.json` reads as a `failed` job
with error code `store_corrupt`, an unreadable `request.json` as no job at all, and listings skip past both. A pixel
file that is missing or does not match its digest fails that job (code `store_corrupt`) when it runs. Each bad file is
logged once per process; `JobStore.check()` lists them and `JobStore.quarantine()` moves them aside.

Records written before the pixels had files of their own carry them inline in request.json; they load and run as
they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, TypeVar
from urllib.parse import quote

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict

from pab.runtime.request.conditioning import LosslessPixels, PixelsInfo
from pab.runtime.request.request import PIXEL_FIELDS, GenerationRequest, StoredRequest
from pab.runtime.stats import GenerationStats

from .schemas import CONTENT_FORMATS

if TYPE_CHECKING:
    from .config import StorageConfig

logger = logging.getLogger("ray.serve")

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
DEFAULT_TENANT = "default"
"""The tenant of the single-key mode (`api_key` / `api_key_env`), and the owner of records written without one."""
STORE_CORRUPT = "store_corrupt"
FRAMES_FILE = "frames.png"
PIXEL_FILES: dict[str, str] = {"input_reference": "input_reference.png", "remix": "remix_source.png"}
"""The file of each pixel field of a request (`PIXEL_FIELDS`) in its job's folder."""
assert set(PIXEL_FILES) == set(PIXEL_FIELDS)
PIXEL_READ_ATTEMPTS = 3
"""Reads of a pixel file before an error other than "missing" makes its job `store_corrupt`: on a remote store a read
can fail once (a timeout, a dropped connection) and work a moment later, and failing the job then loses it for good."""
PIXEL_READ_BACKOFF_S = 0.25
"""Wait before the second read; doubled before each further one."""
_ID_PREFIX = "video_"
_ID_TIME_DIGITS = 13
_MISSING_REQUEST_GRACE_S = 60.0  # a job folder this young may be one whose request.json is being written


def new_job_id() -> str:
    """`video_` + creation time in microseconds (13 hex digits, sorts in time order) + 48 random bits."""
    return f"{_ID_PREFIX}{time.time_ns() // 1000:0{_ID_TIME_DIGITS}x}{secrets.token_hex(6)}"


def _valid_id(job_id: str) -> bool:
    return job_id.startswith(_ID_PREFIX) and job_id[len(_ID_PREFIX) :].isalnum()


def _created_s(job_id: str) -> float | None:
    """The creation time a job id carries (seconds), or None for an id of another shape."""
    digits = job_id[len(_ID_PREFIX) : len(_ID_PREFIX) + _ID_TIME_DIGITS]
    try:
        return int(digits, 16) / 1e6
    except ValueError:
        return None


class JobRecord(BaseModel):
    """What was asked: the request with every default resolved, so a re-dispatched job renders the same video.

    `request` keeps its pixels' metadata only (`StoredRequest`); `JobStore.runnable` attaches the pixels from their
    files. `tenant` is who asked (None: written with auth off, or before tenancy existed; such jobs belong to the
    default tenant)."""

    model_config = ConfigDict(frozen=True)

    id: str
    created_at: int
    submitted_at: float
    request: StoredRequest
    tenant: str | None = None

    def owned_by(self, tenant: str | None) -> bool:
        """Whether `tenant` may see this job; None (auth off) sees every job."""
        return tenant is None or (self.tenant or DEFAULT_TENANT) == tenant


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

    @property
    def corrupt(self) -> bool:
        """True for the stand-in state of a job whose state file could not be read."""
        return bool(self.error) and self.error.get("code") == STORE_CORRUPT

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


@dataclass(frozen=True)
class BadRecord:
    """A job file that exists but cannot be read or parsed. `file` is relative to the store root."""

    job_id: str
    file: str
    reason: str


_M = TypeVar("_M", bound=BaseModel)
_reported: set[str] = set()
_reported_lock = threading.Lock()


def _report_once(where: str, bad: BadRecord) -> None:
    """Log a bad file the first time this process meets it, not on every read of it."""
    with _reported_lock:
        if where in _reported:
            return
        _reported.add(where)
    logger.warning(
        "pab store: %s of job %s is unreadable (%s); the job reads as %s. Move it aside with "
        "`pab store check --store URL --quarantine`.",
        bad.file, bad.job_id, bad.reason, _reads_as(bad.file),
    )


def _reads_as(file: str) -> str:
    if file.endswith("request.json"):
        return "absent"
    return "failed (store_corrupt)" if file.endswith("state.json") else "failed (store_corrupt) when it runs"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def corrupt_state(bad: BadRecord) -> JobState:
    """What a job whose state file is unreadable reads as: failed, saying which file and what to do."""
    return JobState(status="failed", error=corrupt_error(bad, "so its status is unknown"))


def corrupt_error(bad: BadRecord, consequence: str) -> dict[str, str]:
    """The error (code `store_corrupt`) of a job one of whose files is bad: which file, why, and what to do."""
    message = (
        f"the job store's record {bad.file} of this job is unreadable ({bad.reason}), {consequence}; "
        "resubmit the job. Operators: `pab store check --quarantine` moves bad records aside."
    )
    return {"code": STORE_CORRUPT, "message": message}


def _fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable; best effort where a filesystem cannot sync directories."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(path: str, data: bytes) -> None:
    """Write tmp, flush + fsync, rename over `path`, fsync the directory: readers see the old or the new file, and
    after a crash the new one is there once this returns."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


class JobStore:
    r"""
    A job store rooted at `url`: a local path (`~` expanded) or any fsspec URL such as `s3://bucket/prefix`.

    Every writer writes whole files; local writes go through a rename so readers never see half a file, and are
    fsynced (file, then directory) so a record that was written survives a crash of the machine.

    Args:
        url: Where the store lives.
        retention_s: How long a finished job (and its files) is kept after it completed; None keeps jobs forever.
            `expires_at` and `sweep` use it.
    """

    def __init__(self, url: str, retention_s: float | None = None) -> None:
        self.url = url
        self.retention_s = retention_s
        if "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self._fs, root = fsspec.core.url_to_fs(url)
        self._root = root.rstrip("/")
        self._local = isinstance(self._fs, LocalFileSystem)
        self._fs.makedirs(self._dir(), exist_ok=True)

    @classmethod
    def from_config(cls, storage: StorageConfig) -> JobStore:
        """The store an app config's `storage` section describes."""
        return cls(storage.url, retention_s=storage.retention_s)

    # paths -----------------------------------------------------------------------------------------------------
    def _dir(self, job_id: str | None = None) -> str:
        base = f"{self._root}/videos"
        if job_id is None:
            return base
        if not _valid_id(job_id):
            raise KeyError(job_id)  # never let an id from a URL walk outside the store
        return f"{base}/{job_id}"

    def _path(self, job_id: str, name: str) -> str:
        return f"{self._dir(job_id)}/{name}"

    def _relative(self, path: str) -> str:
        return path[len(self._root) + 1 :]

    # raw I/O ---------------------------------------------------------------------------------------------------
    def _write(self, path: str, data: bytes) -> None:
        if self._local:
            _write_durably(path, data)
        else:
            self._fs.pipe_file(path, data)

    def _read(self, path: str) -> bytes | None:
        try:
            return self._fs.cat_file(path)
        except FileNotFoundError:
            return None

    def _load(self, job_id: str, name: str, model: type[_M]) -> _M | BadRecord | None:
        """A job file parsed as `model`; None when it does not exist; a `BadRecord` (logged once) when it exists
        but cannot be read or parsed."""
        path = self._path(job_id, name)
        try:
            raw = self._read(path)
            return None if raw is None else model.model_validate_json(raw)
        except (OSError, ValueError) as exc:  # pydantic's ValidationError and UnicodeDecodeError are ValueErrors
            return self._bad_file(job_id, path, _reason(exc))

    def _bad_file(self, job_id: str, path: str, reason: str) -> BadRecord:
        """The `BadRecord` of one of a job's files, logged once per process."""
        bad = BadRecord(job_id, self._relative(path), reason)
        _report_once(f"{self.url}|{bad.file}", bad)
        return bad

    def _attach_file(self, job_id: str, field: str, info: PixelsInfo) -> LosslessPixels | BadRecord:
        """A detached payload with its PNG read from its file, digest checked; a `BadRecord` (logged once) when the
        file is missing, unreadable or not the PNG `info` describes."""
        path = self._path(job_id, PIXEL_FILES[field])
        raw, reason = self._read_retrying(path)
        if raw is not None:
            try:
                return info.attach(raw)
            except ValueError:  # the digest check (the rest of `info` was checked when the record loaded)
                reason = f"not the PNG request.json names: its sha256 is not {info.sha256}"
        return self._bad_file(job_id, path, reason)

    def _read_retrying(self, path: str) -> tuple[bytes | None, str]:
        """(the file's bytes, "") or (None, why not): a missing file at once, any other read error after
        `PIXEL_READ_ATTEMPTS` reads `PIXEL_READ_BACKOFF_S`, 2x, ... apart."""
        for attempt in range(PIXEL_READ_ATTEMPTS):
            if attempt:
                time.sleep(PIXEL_READ_BACKOFF_S * 2 ** (attempt - 1))
            try:
                raw = self._read(path)
            except OSError as exc:
                reason = f"{_reason(exc)} ({attempt + 1} reads)"
                logger.warning("pab store: read %d of %s failed: %s", attempt + 1, path, reason)
                continue
            return (raw, "") if raw is not None else (None, "missing")
        return None, reason

    def _attached(self, record: JobRecord) -> dict[str, LosslessPixels] | BadRecord:
        """Every detached payload of the record with its PNG, or the first bad pixel file."""
        attached: dict[str, LosslessPixels] = {}
        for field, info in record.request.detached().items():
            payload = self._attach_file(record.id, field, info)
            if isinstance(payload, BadRecord):
                return payload
            attached[field] = payload
        return attached

    # jobs ------------------------------------------------------------------------------------------------------
    def create(self, record: JobRecord, pixels: Mapping[str, bytes] | None = None) -> None:
        """Store a new job: first the PNG of each detached payload (`GenerationRequest.detach` gives the record's
        request and `pixels`), then request.json, so a record never names a file that is not there yet."""
        pixels = dict(pixels or {})
        if set(pixels) != set(record.request.detached()):
            raise ValueError(f"job {record.id}: pixels given for {sorted(pixels)}, the record detaches "
                             f"{sorted(record.request.detached())}")
        self._fs.makedirs(self._path(record.id, "claims"), exist_ok=True)  # see `claim`
        if self._local:
            _fsync_dir(self._dir())  # the new job folder's entry, before the record inside it
        for field, png in pixels.items():
            self._write(self._path(record.id, PIXEL_FILES[field]), png)
        self._write(self._path(record.id, "request.json"), record.model_dump_json().encode())

    def runnable(self, record: JobRecord) -> GenerationRequest | BadRecord:
        """The request the generator runs: the record's with its pixels read from their files (digest checked; an
        old record's inline pixels as they are). A `BadRecord` when a pixel file is missing, unreadable or does not
        match its digest: that job cannot run, and no other read of the job opens these files."""
        attached = self._attached(record)
        return attached if isinstance(attached, BadRecord) else record.request.attach(attached)

    def exists(self, job_id: str) -> bool:
        try:
            return self._fs.exists(self._path(job_id, "request.json"))
        except KeyError:
            return False

    def record(self, job_id: str) -> JobRecord | None:
        """The job's record; None when there is no such job or its record is unreadable (it reads as absent)."""
        if not _valid_id(job_id):
            return None
        loaded = self._load(job_id, "request.json", JobRecord)
        return loaded if isinstance(loaded, JobRecord) else None

    def state(self, job_id: str) -> JobState:
        """The job's state; `queued` when nobody has written one yet, `failed` (code `store_corrupt`) when the
        state file is unreadable."""
        loaded = self._load(job_id, "state.json", JobState)
        if isinstance(loaded, BadRecord):
            return corrupt_state(loaded)
        return loaded or JobState()

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
        try:  # the claims folder exists from `create` on, so a deleted job's folder is never made again here
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

    def put_frames(self, job_id: str, png: bytes) -> None:
        """The finished video's exact frames (`conditioning.encode_frames`), written before `completed`."""
        self._write(self._path(job_id, FRAMES_FILE), png)

    def frames(self, job_id: str) -> bytes | None:
        return self._read(self._path(job_id, FRAMES_FILE))

    def delete(self, job_id: str) -> bool:
        if not self.exists(job_id):
            return False
        try:
            self._fs.rm(self._dir(job_id), recursive=True)
        except FileNotFoundError:
            return False  # removed meanwhile (another replica's sweep, a concurrent DELETE)
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

    # listings --------------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every job id, oldest first (including jobs whose records turn out unreadable)."""
        try:
            self._fs.invalidate_cache(self._dir())
            names = self._fs.ls(self._dir(), detail=False)
        except FileNotFoundError:
            return []
        except OSError as exc:
            logger.warning("pab store: cannot list %s (%s); listing no jobs", self._dir(), _reason(exc))
            return []
        ids = (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
        return sorted(i for i in ids if _valid_id(i))

    def page(
        self, *, after: str | None, limit: int, order: Literal["asc", "desc"], tenant: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """One page of `tenant`'s records (every tenant's when None) after the cursor id in the given order, and
        whether more follow. Unreadable records are skipped."""
        ids = self.ids()
        if order == "desc":
            ids.reverse()
        if after is not None:
            ids = [i for i in ids if (i > after if order == "asc" else i < after)]
        records: list[JobRecord] = []
        for job_id in ids:
            record = self.record(job_id)  # None when deleted since the listing, or unreadable
            if record is None or not record.owned_by(tenant):
                continue
            if len(records) == limit:
                return records, True
            records.append(record)
        return records, False

    def unfinished_ids(self, tenant: str | None = None) -> list[str]:
        """The jobs still to run (queued or in progress), oldest first: what a restarted ingress dispatches again.
        Bad records are skipped (and logged once), never stop the enumeration."""
        out = []
        for job_id in self.ids():
            record = self.record(job_id)
            if record is not None and record.owned_by(tenant) and not self.state(job_id).terminal:
                out.append(job_id)
        return out

    # retention -------------------------------------------------------------------------------------------------
    def expires_at(self, record: JobRecord, state: JobState | None = None) -> int | None:
        """When a finished job and its files are removed (Unix seconds): completion (or creation) + retention.
        None while the job is unfinished, when its state is unreadable, or when jobs are kept forever."""
        if self.retention_s is None:
            return None
        state = state or self.state(record.id)
        if not state.terminal or state.corrupt:
            return None
        return int((state.completed_at or record.created_at) + self.retention_s)

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove the finished jobs whose `expires_at` has passed, with their files; returns their ids.

        Never removes an unfinished job, nor a bad record (that is `check`'s to report). Jobs younger than the
        retention are not even read: their id says when they were created.
        """
        if self.retention_s is None:
            return []
        now = time.time() if now is None else now
        removed = []
        for job_id in self.ids():
            created = _created_s(job_id)
            if created is not None and created + self.retention_s > now:
                break  # ids are in creation order: every later job is younger still
            record = self.record(job_id)
            expires = None if record is None else self.expires_at(record)
            if expires is not None and expires <= now and self._remove_quietly(job_id):
                removed.append(job_id)
        return removed

    def _remove_quietly(self, job_id: str) -> bool:
        try:
            return self.delete(job_id)
        except OSError as exc:
            logger.warning("pab store: could not remove expired job %s (%s)", job_id, _reason(exc))
            return False

    # bad records -----------------------------------------------------------------------------------------------
    def check(self, now: float | None = None) -> list[BadRecord]:
        """Every bad record: a request or state file that cannot be read or parsed, a job folder without its
        request (older than a minute, so a job being created right now is not one), or a pixel file the request
        names that is missing or does not match its digest (this reads every pixel file: an operator's scan)."""
        now = time.time() if now is None else now
        bad: list[BadRecord] = []
        for job_id in self.ids():
            request = self._load(job_id, "request.json", JobRecord)
            if request is None and now - (_created_s(job_id) or 0.0) > _MISSING_REQUEST_GRACE_S:
                request = BadRecord(job_id, self._relative(self._path(job_id, "request.json")), "missing")
            pixels = self._attached(request) if isinstance(request, JobRecord) else None
            state = self._load(job_id, "state.json", JobState)
            bad.extend(b for b in (request, pixels, state) if isinstance(b, BadRecord))
        return bad

    def quarantine(self, job_id: str) -> str:
        """Move a job's folder to `quarantine/<id>/` (a new name if that is taken); returns where it went, relative
        to the store root. The job disappears from the API and from every listing."""
        source = self._dir(job_id)
        base = f"{self._root}/quarantine/{job_id}"
        target, n = base, 1
        while self._fs.exists(target):
            target, n = f"{base}.{n}", n + 1
        self._fs.makedirs(f"{self._root}/quarantine", exist_ok=True)
        if self._local:
            os.replace(source, target)
            _fsync_dir(self._dir())
        else:
            self._fs.mv(source, target, recursive=True)
        return self._relative(target)


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
