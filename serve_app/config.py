"""The application config: one validated pydantic model that `build_app` (and `serve run ... key=value`) consumes.

Flat top-level fields are the ones people change on a command line (`model=tiny-cogvideox sp_degree=4`); the nested
sections (`limits`, `storage`, `autoscaling_config`) are set from a serve config YAML. The defaults serve the tiny
embedded Latte on CPU with two workers per replica, so the whole distributed path runs on a laptop.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pab.parallel.config import ParallelConfig, ParallelConfigError
from pab.parallel.support import check_supported
from pab.runtime.models.families import model_adapter


DEFAULT_MODEL = "tiny-shapes"
DEFAULT_STORE_URL = os.path.join(os.path.expanduser("~"), ".cache", "pab-serve", "store")
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
_TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsConfig(_Section):
    r"""
    Upper bounds on one request; the request resolver (`pab.runtime.request.resolve.check_limits`) enforces each
    with a 400 error that names it.

    `max_work` bounds the product frames x pixels-per-frame x steps, a proxy for the denoising cost, so that a
    request cannot be large in all three dimensions at once even when each is within its own bound.
    """

    max_frames: int = Field(32, ge=1)
    max_pixels: int = Field(128 * 128, ge=1, description="width x height of one frame")
    max_steps: int = Field(200, ge=1)
    max_work: int = Field(8 * 64 * 64 * 200, ge=1, description="frames x width x height x steps")
    max_prompt_chars: int = Field(4000, ge=1)


class ReferenceConfig(_Section):
    r"""
    What `input_reference` (image-to-video) may be (`serve_app.references`, checked at POST before a job exists).

    Uploads and data URLs are always read; a remote `http(s)` URL only when `allowed_url_hosts` names its host
    (exactly, e.g. `images.example.com`; no wildcards), and then fetched once, without following redirects, with
    `fetch_timeout_s` and at most `max_bytes` read. `max_pixels` bounds width x height as the image header declares
    it, before anything is decoded (so a small file claiming 30000 x 30000 pixels is refused unread).
    """

    max_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest encoded image accepted (bytes)")
    max_pixels: int = Field(4096 * 4096, ge=1, description="largest width x height an image header may declare")
    allowed_url_hosts: list[str] = Field(
        default_factory=list, description="hosts whose http(s) image URLs are fetched; empty: remote URLs refused")
    fetch_timeout_s: float = Field(10.0, gt=0, description="timeout of one remote image fetch (connect and read)")


class StorageConfig(_Section):
    r"""
    Where job records and finished videos live: a local directory (default `~/.cache/pab-serve/store`), or any
    fsspec URL (`s3://bucket/prefix`) that every node can reach. Ingress replicas hold no job state of their own, so
    a restarted one picks up where the last left off.

    Finished jobs (completed or failed) and their files are removed `retention_s` after they finished (OpenAI's
    `expires_at`); every ingress replica sweeps the store every `sweep_period_s`. `retention_s: null` keeps every
    job forever. Unfinished jobs never expire.
    """

    url: str = DEFAULT_STORE_URL
    progress_interval_s: float = Field(0.5, ge=0, description="minimum time between two progress writes")
    retention_s: float | None = Field(DEFAULT_RETENTION_S, gt=0, description="keep finished jobs this long")
    sweep_period_s: float = Field(3600.0, gt=0, description="how often expired jobs are removed")


class QueueConfig(_Section):
    r"""
    Back-pressure: once one ingress replica holds `max_jobs` jobs waiting or running, `POST /v1/videos` answers 429
    with `Retry-After: retry_after_s` and creates no job (accepted jobs are never dropped). Per ingress replica,
    like Serve's `max_queued_requests`; `max_jobs: null` turns the limit off.
    """

    max_jobs: int | None = Field(64, ge=1)
    retry_after_s: int = Field(10, ge=1)


class EngineConfig(_Section):
    r"""
    The generation engine of each generator replica (`deployments.engine`): its batches and its re-runs.

    `max_batch_size` jobs of the same size, frames, steps, PAB schedule and guidance mode share one denoising loop;
    measured on the CPU config (tiny-shapes, in one process) batch 4 ran 2.9x and batch 8 4.2x the throughput of one
    at a time, with every video identical to the one made alone. An idle engine waits at most `batch_wait_ms` for
    companions of a lone job. A job whose worker, worker group or replica died runs again, up to `max_attempts`
    in all; a runner holds its job under a lease of `lease_s` seconds that it renews while it runs, so a job whose
    runner died is taken over at the latest when the lease runs out.
    """

    max_batch_size: int = Field(8, ge=1, le=256, description="most jobs in one denoising loop")
    batch_wait_ms: int = Field(100, ge=0, le=60_000, description="how long an idle engine waits for companions")
    max_attempts: int = Field(3, ge=1, le=20, description="runs of one job, first one included")
    lease_s: float = Field(30.0, gt=0, le=3600, description="how long a runner holds a job without renewing")


class QualityWatchConfig(_Section):
    r"""
    The quality watch (`deployments.quality_watch`): what PAB costs in quality on live traffic.

    While a generator replica is idle it re-runs a sample of its completed PAB jobs with PAB off and measures the
    served video against the full model's (PSNR, SSIM: `ray_pab_quality_psnr_db`, `ray_pab_quality_ssim`). When the
    rolling median PSNR of the default preset's last `window` samples falls below `floor_psnr_db`, jobs that name
    no preset run with `fallback_preset` until it is back at or above the floor (a log line and the gauge
    `ray_pab_quality_fallback_active` say so). A job that arrives stops the re-run at its next step end, and waits
    for that only.

    Args:
        sample_rate: Share of completed PAB jobs re-run (0 turns the watch off; the default on every config but the
            CPU demo, `serve_app/configs/serve_cpu.yaml`: on a GPU a re-run is a full-price generation).
        floor_psnr_db: The rolling median PSNR (dB) below which the default preset is replaced.
        fallback_preset: What jobs without a preset run with while the default is below the floor.
        window: Samples in the rolling median (per preset, pooled over the replicas through the job store).
        min_samples: Samples the default preset needs before the watch decides anything.
        frame_cache_mb: Per worker, how many MiB of recently served frames are kept for the watch to compare
            against; a sample whose frames were evicted re-runs its PAB generation too.
        seed: Seed of the sampling draw (reproducible samples).
    """

    sample_rate: float = Field(0.0, ge=0, le=1)
    floor_psnr_db: float = Field(25.0, gt=0)
    fallback_preset: str = "none"
    window: int = Field(16, ge=1, le=1000)
    min_samples: int = Field(4, ge=1)
    frame_cache_mb: float = Field(64.0, ge=0)
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0

    @field_validator("fallback_preset")
    @classmethod
    def _known_fallback(cls, value: str) -> str:
        return _check_preset("quality_watch.fallback_preset", value)

    @model_validator(mode="after")
    def _window_holds_min(self) -> "QualityWatchConfig":
        if self.min_samples > self.window:
            raise ValueError(f"quality_watch.min_samples={self.min_samples} exceeds window={self.window}")
        return self


def _check_preset(field: str, value: str) -> str:
    from pab.presets import get_preset

    try:
        get_preset(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return value


class APIKeyConfig(_Section):
    r"""
    One API key of one tenant. A tenant sees, lists, downloads and deletes only its own jobs.

    Args:
        tenant: The tenant's name (letters, digits, `._@-`; at most 64). Several keys may name one tenant (rotation).
        key_sha256: The hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`), so the config holds no secret.
        key_env: Or the name of an environment variable that holds the key on every ingress node.
        max_queued_jobs: At most this many of the tenant's jobs waiting or running per ingress replica; past it,
            `POST /v1/videos` answers 429. None: only the server-wide `queue.max_jobs` applies.
    """

    tenant: str = Field(pattern=_TENANT_PATTERN)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    key_env: str | None = Field(None, min_length=1)
    max_queued_jobs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "APIKeyConfig":
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"api_keys entry of tenant {self.tenant!r}: set exactly one of key_sha256 or key_env")
        return self


class AppConfig(BaseModel):
    r"""
    Everything `serve_app.entrypoints.builder:build_app` needs.

    Args:
        model: An embedded model name (`tiny-shapes`, trained by the project; the random-weight `tiny-latte`,
            `tiny-cogvideox`, `tiny-wan`) or a diffusers model id/path.
        served_model_name: The name clients pass as `model` (defaults to `model`).
        device: `cpu` places one CPU bundle per worker; `cuda` one GPU bundle per worker.
        sp_degree, cfg_degree: Sequence- and CFG-parallel degrees; a replica runs `sp_degree * cfg_degree` workers.
        cpus_per_worker, gpus_per_worker: The size of each worker's placement-group bundle.
        torch_threads: Intra-op threads per worker (1 keeps two CPU workers from fighting over two cores).
        cpu_generation_niceness: On CPU devices, how much lower (Unix nice increment) a worker runs once its model is
            loaded, so that cores shared by serving replicas and a replica that is starting (a scale-up) go mostly to
            the start, which is what lets the queue drain. GPU workers keep Ray's priority: their CPU thread feeds
            the device. 0 turns it off.
        dtype: Weights and activations dtype on the workers.
        pab_preset: The PAB preset used when a request names none (see `pab.presets.PRESET_NAMES`).
        defaults: Generation defaults overriding the model's own (`num_frames`, `height`, `width`,
            `num_inference_steps`, `guidance_scale`, `fps`).
        num_replicas, autoscaling_config, max_ongoing_requests: Generator deployment scaling (one replica when
            neither is set). Every job waiting in or running on a replica's engine is one ongoing request, so
            `max_ongoing_requests` (default: twice `engine.max_batch_size`) bounds a replica's engine queue and the
            rest queue where Serve's autoscaler sees them.
            `autoscaling_config` is Serve's, on top of video defaults (`deployments.autoscaling`: target 1 ongoing
            request, quick upscale, slow downscale).
        queue: Back-pressure (`QueueConfig`): 429 + Retry-After past `max_jobs` jobs per ingress replica.
        references: What an `input_reference` image may be: byte and pixel limits, the remote hosts allowed
            (`ReferenceConfig`).
        engine: Batching and re-runs of the generator replicas' engines (`EngineConfig`).
        health_check_period_s: How often Serve asks a generator replica whether its workers are alive.
        poll_after_ms, min_poll_after_ms: Bounds of the `openai-poll-after-ms` hint on unfinished jobs. Within them
            the hint is half the job's estimated remaining time, so clients poll rarely early on and see the end
            soon after it happens.
        hold_poll_ms: A GET of a job that this ingress replica is running and that should finish within this many
            milliseconds waits (at most this long) for the job to finish before answering, so a polling client sees
            `completed` the moment it happens instead of one poll interval later. 0 answers at once.
        collective_timeout_s: torch.distributed store and collective timeout of the worker group.
        collective_grace_s: After one rank fails, how long the others get to finish before the group counts as
            broken (they are usually stuck in a collective with the failed rank).
        ingress_replicas: Ingress (HTTP) replicas.
        api_key, api_key_env: The single-key mode: one bearer key (tenant "default"), literal or (preferred: a
            literal key shows in `ps` and shell history) the name of an environment variable that holds it.
        api_keys: Tenancy: keys mapped to tenants (`APIKeyConfig`: `{tenant, key_sha256 | key_env,
            max_queued_jobs}`); combines with the single key. Auth is off when no key is configured at all.
        allow_unauthenticated_public: Serve HTTP beyond loopback with auth off anyway. Without it, `pab serve` and
            `build_app` refuse to start so (`serve_app.safety.check_bind`).
        quality_watch: Re-runs of sampled PAB jobs with PAB off while idle, and the preset fallback
            (`QualityWatchConfig`); off unless `sample_rate` > 0.
        log_level: What the replicas log (`serve_app.logs`): `warning` keeps a console to job ends and problems,
            `info` adds replica start-up, `debug` every HTTP request.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = DEFAULT_MODEL
    served_model_name: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    sp_degree: int = Field(2, ge=1)
    cfg_degree: int = Field(1, ge=1, le=2)
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    torch_threads: int = Field(1, ge=1)
    cpu_generation_niceness: int = Field(4, ge=0, le=19)
    pab_preset: str = "reference"
    compile: bool | dict[str, Any] = Field(
        False,
        description="torch.compile each worker's transformer with PAB's decisions outside the compiled region: true, "
        "or fields of pab.runtime.pipelines.compile.CompileConfig (backend, options, guards, warm_up...); guards "
        "'inputs' suits a served model, which never changes once loaded (compiled forwards ~10% faster). Off by "
        "default: on "
        "the 2-core CPU a cold warm-up takes ~26 s (~65 s with options freezing+cpp_wrapper) against a 20 s "
        "replica-start target, for tiny-shapes generations ~0.1 s faster than eager PAB-246 (~260 to pay back) "
        "(BENCHMARKS.md, bench/compile_warmup.py); needs sp_degree=1 and cfg_degree=1: "
        "sequence/CFG parallel cannot be compiled yet.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict)

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int | None = Field(None, ge=1)
    health_check_period_s: float = Field(2.0, gt=0)
    poll_after_ms: int = Field(1000, ge=1)
    min_poll_after_ms: int = Field(25, ge=1)
    hold_poll_ms: int = Field(1000, ge=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    collective_timeout_s: float = Field(120.0, gt=0)
    collective_grace_s: float = Field(2.0, ge=0)
    ingress_replicas: int = Field(1, ge=1)

    api_key: SecretStr | None = None
    api_key_env: str | None = None
    api_keys: list[APIKeyConfig] = Field(default_factory=list)
    allow_unauthenticated_public: bool = False

    limits: LimitsConfig = LimitsConfig()
    references: ReferenceConfig = ReferenceConfig()
    storage: StorageConfig = StorageConfig()
    queue: QueueConfig = QueueConfig()
    engine: EngineConfig = EngineConfig()
    quality_watch: QualityWatchConfig = QualityWatchConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    @field_validator("pab_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return _check_preset("pab_preset", value)

    @field_validator("defaults")
    @classmethod
    def _known_defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"num_frames", "height", "width", "num_inference_steps", "guidance_scale", "fps"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"defaults: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _one_limit_per_tenant(cls, value: list[APIKeyConfig]) -> list[APIKeyConfig]:
        limits: dict[str, int | None] = {}
        for entry in value:
            if limits.setdefault(entry.tenant, entry.max_queued_jobs) != entry.max_queued_jobs:
                raise ValueError(f"api_keys: the keys of tenant {entry.tenant!r} set different max_queued_jobs")
        digests = [e.key_sha256.lower() for e in value if e.key_sha256]
        if len(set(digests)) != len(digests):
            raise ValueError("api_keys: the same key_sha256 appears twice")
        return value

    @model_validator(mode="after")
    def _scaling_is_one_of(self) -> "AppConfig":
        if self.autoscaling_config is not None and self.num_replicas is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        if self.min_poll_after_ms > self.poll_after_ms:
            raise ValueError(
                f"min_poll_after_ms={self.min_poll_after_ms} must not exceed poll_after_ms={self.poll_after_ms}"
            )
        return self

    @model_validator(mode="after")
    def _family_can_split(self) -> "AppConfig":
        """A parallel setting the model's family cannot run is a config error now, not replicas that fail to start
        (`pab.parallel.support`; a hub id's family is known only once loaded, and then the workers refuse it)."""
        adapter = model_adapter(self.model)
        if adapter is not None:
            try:
                check_supported(adapter, self._split())
            except ParallelConfigError as exc:
                raise ValueError(f"{exc.field}: model {self.model!r}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _compile_is_valid(self) -> "AppConfig":
        """A bad `compile` setting (an unknown field, or with more than one worker per replica) is a config error
        now, not workers that fail to load."""
        from pab.runtime.pipelines.compile import CompileConfigError, resolve_compile

        try:
            resolve_compile(self.compile, self._split())
        except CompileConfigError as exc:
            raise ValueError(f"compile: {exc}") from None
        return self

    def _split(self) -> ParallelConfig:
        """This config's degrees as a `ParallelConfig`, for the checks above (the workers add their timeout)."""
        return ParallelConfig(sp_degree=self.sp_degree, cfg_degree=self.cfg_degree)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def generator_max_ongoing_requests(self) -> int:
        """Requests one generator replica takes at once: enough to fill a batch and queue the next."""
        return self.max_ongoing_requests or 2 * self.engine.max_batch_size

    @property
    def world_size(self) -> int:
        """Workers per generator replica: one per placement-group bundle."""
        return self.sp_degree * self.cfg_degree

    def worker_bundle(self) -> dict[str, float]:
        """The resources of one worker (and so of one placement-group bundle)."""
        bundle = {"CPU": self.cpus_per_worker}
        if self.device == "cuda":
            bundle["GPU"] = self.gpus_per_worker
        return bundle

    def placement_group_bundles(self) -> list[dict[str, float]]:
        return [self.worker_bundle() for _ in range(self.world_size)]

    def card_key(self) -> str:
        """Where this deployment's model card lives in the store: the served name plus a hash of the config, so an
        ingress never reads the card a generator of an earlier, different config left behind."""
        digest = hashlib.sha256(self.model_dump_json(exclude={"api_key", "api_key_env"}).encode()).hexdigest()
        return f"{self.model_name}@{digest[:16]}"

    @property
    def auth_configured(self) -> bool:
        """Whether requests must present a key (`serve_app.auth.Authenticator` resolves and checks them)."""
        return self.api_key is not None or bool(self.api_key_env) or bool(self.api_keys)

    def resolved_api_key(self) -> str | None:
        """The key requests must present, or None when auth is off."""
        if self.api_key is not None:
            return self.api_key.get_secret_value() or None
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "")
            if not value:
                raise ValueError(
                    f"api_key_env={self.api_key_env!r} is set but that environment variable is empty on this node; "
                    "set it (e.g. from a Kubernetes secret) or remove api_key_env to turn auth off"
                )
            return value
        return None
