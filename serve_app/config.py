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

from .errors import limit_exceeded
from .schemas import GenerationRequest

DEFAULT_MODEL = "tiny-shapes"
DEFAULT_STORE_URL = os.path.join(os.path.expanduser("~"), ".cache", "pab-serve", "store")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsConfig(_Section):
    r"""
    Upper bounds on one request; each is enforced by the ingress with a 400 error that names it.

    `max_work` bounds the product frames x pixels-per-frame x steps, a proxy for the denoising cost, so that a
    request cannot be large in all three dimensions at once even when each is within its own bound.
    """

    max_frames: int = Field(32, ge=1)
    max_pixels: int = Field(128 * 128, ge=1, description="width x height of one frame")
    max_steps: int = Field(200, ge=1)
    max_work: int = Field(8 * 64 * 64 * 200, ge=1, description="frames x width x height x steps")
    max_prompt_chars: int = Field(4000, ge=1)

    def check(self, request: GenerationRequest) -> None:
        """Raise a 400 `APIError` naming the first limit a resolved request exceeds."""
        pixels = request.width * request.height
        work = request.num_frames * pixels * request.num_inference_steps
        checks = (
            ("max_prompt_chars", len(request.prompt), "prompt", "prompt length in characters"),
            ("max_frames", request.num_frames, "frames", "frames"),
            ("max_pixels", pixels, "size", "width x height"),
            ("max_steps", request.num_inference_steps, "steps", "steps"),
            ("max_work", work, None, "frames x width x height x steps"),
        )
        for limit, value, param, what in checks:
            bound = getattr(self, limit)
            if value > bound:
                raise limit_exceeded(limit, value, bound, param, what)


class StorageConfig(_Section):
    r"""
    Where job records and finished videos live: a local directory, or any fsspec URL (`s3://bucket/prefix`) that
    every node can reach. Ingress replicas hold no job state of their own, so a restarted one picks up where the
    last left off.
    """

    url: str = DEFAULT_STORE_URL
    progress_interval_s: float = Field(0.5, ge=0, description="minimum time between two progress writes")


class QueueConfig(_Section):
    r"""
    Back-pressure: once one ingress replica holds `max_jobs` jobs waiting or running, `POST /v1/videos` answers 429
    with `Retry-After: retry_after_s` and creates no job (accepted jobs are never dropped). Per ingress replica,
    like Serve's `max_queued_requests`; `max_jobs: null` turns the limit off.
    """

    max_jobs: int | None = Field(64, ge=1)
    retry_after_s: int = Field(10, ge=1)


class AppConfig(BaseModel):
    r"""
    Everything `serve_app.builder:build_app` needs.

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
            neither is set). A replica runs one
            generation at a time, so `max_ongoing_requests` is 1 and the rest queue where Serve's autoscaler sees them.
            `autoscaling_config` is Serve's, on top of video defaults (`deployments.autoscaling`: target 1 ongoing
            request, quick upscale, slow downscale).
        queue: Back-pressure (`QueueConfig`): 429 + Retry-After past `max_jobs` jobs per ingress replica.
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
        api_key, api_key_env: Optional bearer key (literal, or the name of an environment variable that holds it);
            off when both are unset.
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
        "or fields of pab.runtime.pipelines.compile.CompileConfig (backend, options, warm_up...). Off by default: on "
        "the 2-core CPU a cold warm-up takes ~50 s (~30 s for the first graph, ~20 s for PAB-246's 5) against a 20 s "
        "replica-start target, for tiny-shapes generations ~1.5x faster than eager PAB-246 (BENCHMARKS.md); "
        "sequence/CFG parallel cannot be compiled yet.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict)

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = Field(1, ge=1)
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

    limits: LimitsConfig = LimitsConfig()
    storage: StorageConfig = StorageConfig()
    queue: QueueConfig = QueueConfig()

    @field_validator("pab_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from pab.presets import get_preset

        try:
            get_preset(value)
        except ValueError as exc:
            raise ValueError(f"pab_preset: {exc}") from None
        return value

    @field_validator("defaults")
    @classmethod
    def _known_defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"num_frames", "height", "width", "num_inference_steps", "guidance_scale", "fps"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"defaults: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
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

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

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
