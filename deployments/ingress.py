"""The HTTP ingress: the OpenAI Videos API (`/v1/videos`, `/v1/models`) over FastAPI, through `@serve.ingress`.

A `POST /v1/videos` validates the request against the served model's card, stores the job record and dispatches
the job at once as a handle call to the generator, so the job is an ongoing or queued request that Serve's
autoscaler counts, and returns the queued Video. The generator writes progress, the video and the outcome to the
store; this replica only reads them, so any ingress replica answers for any job, and a restarted replica dispatches
again the jobs the store shows unfinished.
"""


import asyncio
import hmac
import json
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pab.config import PABConfigError
from pab.runtime.request.params import GenerationParamsError
from pab.runtime.video import MIME_TYPES
from serve_app.config import AppConfig
from serve_app.errors import APIError, invalid, not_found, server_error, unauthorized
from serve_app.model_card import ModelCard, seconds_label
from serve_app.schemas import (
    CONTENT_FORMATS,
    GenerationRequest,
    Model,
    ModelList,
    Video,
    VideoCreateBody,
    VideoDeleted,
    VideoError,
    VideoList,
    parse_size,
)
from serve_app.store import JobRecord, JobState, JobStore, new_job_id

from . import metrics
from .autoscaling import queue_full_error
from .workers import ReplicaUnavailableError

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "VideoIngress"
DISPATCH_RETRIES = 20
"""How often a job is dispatched again when its generator replica was lost before the job started on it."""
QUEUE_DEPTH_PERIOD_S = 5.0
CARD_REFRESH_S = 5.0

# Internal field names (pab.runtime.pipelines) -> the request field the client sent.
_PARAM_NAMES = {"num_frames": "frames", "height": "size", "width": "size", "num_inference_steps": "steps"}

app = FastAPI(
    title="pab-serve",
    description="OpenAI-compatible video generation with Pyramid Attention Broadcast.",
    version="0.1.0",
)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _api_error_response(_from_pydantic(exc.errors()))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return _api_error_response(error)


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("pab: unexpected error in %s %s", request.method, request.url.path)
    return _api_error_response(server_error(f"internal error: {type(exc).__name__}: {exc}"))


def _api_error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers)


def _from_pydantic(errors: Any) -> APIError:
    """The first pydantic error as a 400 naming the field."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = loc[0] if loc else None
    return invalid(f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid value')}", param=param)


async def _read_body(request: Request) -> dict[str, Any]:
    """The create body from JSON or a (multipart or urlencoded) form, as a plain dict of fields."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        return {k: v for k, v in form.multi_items() if not (isinstance(v, str) and v == "" and k != "prompt")}
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with at least a 'prompt' field", code="invalid_json")
    return body


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class VideoIngress:
    async def __init__(self, generator: DeploymentHandle, config: AppConfig) -> None:
        self._generator = generator
        self._config = config
        self._store = JobStore(config.storage.url)
        self._api_key = config.resolved_api_key()
        self._card: ModelCard | None = None
        self._card_read_at = 0.0
        self._started_at = int(time.time())  # whole seconds, like ModelCard.created
        self._dispatched: dict[str, asyncio.Task[None]] = {}
        self._admitting = 0  # jobs past the queue check whose record is still being written
        self._responses: dict[str, DeploymentResponse] = {}
        self._background = [asyncio.create_task(self._resume()), asyncio.create_task(self._report_queue_depth())]

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        """Bearer-key check in constant time; a no-op when no key is configured."""
        if self._api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
            raise unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>' (openai: api_key=...)")

    def _model_card(self) -> ModelCard:
        """The served model's card, as its generator replicas last published it.

        A card older than this ingress replica may come from an earlier deployment with other code or weights (the
        store outlives deployments), so it is used but read again on the next request until a newer one appears;
        a current card is re-read every `CARD_REFRESH_S`, so a replaced generator's card is seen soon too.
        """
        now = time.time()
        if self._card is None or self._card.created < self._started_at or now - self._card_read_at > CARD_REFRESH_S:
            raw = self._store.card(self._config.card_key())
            if raw is not None:
                self._card, self._card_read_at = ModelCard.model_validate_json(raw), now
        if self._card is None:
            raise APIError(
                503,
                f"model {self._config.model_name!r} is still loading; retry in a few seconds",
                type="server_error",
                code="model_loading",
            )
        return self._card

    def _video(self, record: JobRecord, state: JobState | None = None) -> Video:
        state = state or self._store.state(record.id)
        req = record.request
        error = VideoError(**{k: state.error[k] for k in ("code", "message")}) if state.error else None
        return Video(
            id=record.id,
            model=req.model or self._config.model_name,
            status=state.status,
            progress=state.progress,
            created_at=record.created_at,
            completed_at=state.completed_at,
            seconds=seconds_label(req.num_frames, req.fps),
            size=f"{req.width}x{req.height}",
            prompt=req.prompt,
            error=error,
            frames=req.num_frames,
            fps=req.fps,
            seed=req.seed,
            steps=req.num_inference_steps,
            pab=req.pab,
            stats=state.stats,
            timings=state.timings,
        )

    def _video_response(self, record: JobRecord, state: JobState) -> JSONResponse:
        """The Video, with the `openai-poll-after-ms` hint the SDK's poll loop honours while the job is unfinished."""
        headers = {}
        if not state.terminal:
            cfg = self._config
            headers["openai-poll-after-ms"] = str(state.poll_after_ms(time.time(), cfg.min_poll_after_ms, cfg.poll_after_ms))
        return JSONResponse(self._video(record, state).model_dump(mode="json"), headers=headers)

    def _record(self, video_id: str) -> JobRecord:
        record = self._store.record(video_id)
        if record is None:
            raise not_found("video", video_id, param="video_id")
        return record

    # ---- dispatch --------------------------------------------------------------------------------------------
    def _dispatch(self, job_id: str) -> None:
        if job_id not in self._dispatched:
            self._dispatched[job_id] = asyncio.create_task(self._run(job_id))

    async def _run(self, job_id: str) -> None:
        """Drive one job through the generator, dispatching again while the replica was lost before starting it."""
        try:
            for attempt in range(DISPATCH_RETRIES + 1):
                response = self._generator.run_job.remote(job_id)
                self._responses[job_id] = response
                try:
                    await response
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the generator records its own failures; this is a lost replica
                    state = self._store.state(job_id)
                    if state.terminal or not self._store.exists(job_id):
                        return
                    retry = isinstance(exc, ReplicaUnavailableError) or state.status == "queued"
                    if retry and attempt < DISPATCH_RETRIES:
                        logger.warning("pab job %s: generator unavailable (%s); dispatching again", job_id, exc)
                        await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
                        continue
                    self._fail(job_id, state, exc)
                    return
        finally:
            self._dispatched.pop(job_id, None)
            self._responses.pop(job_id, None)

    def _fail(self, job_id: str, state: JobState, exc: BaseException) -> None:
        message = (
            f"the generator replica running this job was lost ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "resubmit the job"
        )
        logger.error("pab job %s failed: %s", job_id, message)
        failed = state.model_copy(
            update={"status": "failed", "completed_at": int(time.time()), "error": {"code": "generator_lost", "message": message}}
        )
        self._store.set_state(job_id, failed)
        record = self._store.record(job_id)
        preset = ((record.request.pab if record else None) or {}).get("name", "none")
        metrics.record_job_finished(self._config.model_name, preset, None, None, "failed")

    async def _resume(self) -> None:
        """Dispatch the jobs the store shows unfinished: their ingress replica may be gone."""
        try:
            ids = await asyncio.to_thread(self._store.ids)
            pending = [i for i in ids if not (await asyncio.to_thread(self._store.state, i)).terminal]
        except Exception:
            logger.exception("pab: could not list unfinished jobs to resume")
            return
        for job_id in pending:
            self._dispatch(job_id)
        if pending:
            logger.info("pab: dispatched %d unfinished job(s) again", len(pending))

    async def _report_queue_depth(self) -> None:
        """Publish how many of this replica's jobs wait for a generator and how many run."""
        while True:
            try:
                states = [await asyncio.to_thread(self._store.state, i) for i in list(self._dispatched)]
                running = sum(s.status == "in_progress" for s in states)
                metrics.set_queue_depth(len(states) - running, running)
            except Exception:
                logger.warning("pab: could not report queue depth", exc_info=True)
            await asyncio.sleep(QUEUE_DEPTH_PERIOD_S)

    # ---- routes ----------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> dict[str, str]:
        """Liveness of this ingress replica (no auth: for load balancers and probes)."""
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> ModelList:
        self._authorize(request)
        card = self._model_card()
        return ModelList(data=[Model(id=card.name, created=card.created)])

    @app.post("/v1/videos")
    async def create_video(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = await _read_body(request)
        try:
            create = VideoCreateBody.model_validate(body)
        except ValidationError as exc:
            raise _from_pydantic(exc.errors()) from None
        resolved = self._resolve(create)
        self._check_queue()
        submitted = time.time()
        record = JobRecord(id=new_job_id(), created_at=int(submitted), submitted_at=submitted, request=resolved)
        self._admitting += 1  # holds the queue slot across the await, so a burst cannot overshoot max_jobs
        try:
            await asyncio.to_thread(self._store.create, record)
        finally:
            self._admitting -= 1
        self._dispatch(record.id)
        return self._video_response(record, JobState())

    def _check_queue(self) -> None:
        """Back-pressure: 429 + Retry-After before a job exists once this replica holds `queue.max_jobs` jobs."""
        limit, in_flight = self._config.queue, len(self._dispatched) + self._admitting
        if limit.max_jobs is not None and in_flight >= limit.max_jobs:
            metrics.record_job_rejected("queue_full")
            raise queue_full_error(in_flight, limit.max_jobs, limit.retry_after_s)

    def _resolve(self, create: VideoCreateBody) -> GenerationRequest:
        """Turn the OpenAI-shaped body into a fully resolved `GenerationRequest`, or raise a 4xx naming the field."""
        card = self._model_card()
        if create.input_reference is not None:
            raise invalid("input_reference: image-to-video is not supported by this server; omit input_reference",
                          param="input_reference", code="unsupported_parameter")
        width = height = None
        if create.size is not None:
            try:
                width, height = parse_size(create.size)
            except ValueError as exc:
                raise invalid(str(exc), param="size") from None
        frames, frames_param = create.frames, "frames"
        if frames is None and create.seconds is not None:
            frames, frames_param = card.frames_for_seconds(create.seconds, create.fps or card.defaults["fps"]), "seconds"
        try:
            request = GenerationRequest(
                prompt=create.prompt,
                negative_prompt=create.negative_prompt,
                model=create.model,
                num_frames=frames,
                height=height,
                width=width,
                num_inference_steps=create.steps,
                guidance_scale=create.guidance_scale,
                seed=create.seed,
                fps=create.fps,
                pab=create.pab,
            )
            return card.resolve(request, self._config.pab_preset, self._config.limits)
        except ValidationError as exc:
            raise _from_pydantic(exc.errors()) from None
        except GenerationParamsError as exc:
            param = frames_param if exc.field == "num_frames" else _PARAM_NAMES.get(exc.field, exc.field)
            if exc.field == "model":
                raise APIError(404, str(exc), param="model", code="model_not_found") from None
            raise invalid(str(exc), param=param) from None
        except PABConfigError as exc:
            raise invalid(f"pab: {exc}", param="pab") from None

    @app.get("/v1/videos")
    async def list_videos(
        self,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> VideoList:
        self._authorize(request)
        records, has_more = await asyncio.to_thread(self._store.page, after=after, limit=limit, order=order)
        data = [self._video(r) for r in records]
        return VideoList(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    @app.get("/v1/videos/{video_id}")
    async def retrieve_video(self, request: Request, video_id: str) -> JSONResponse:
        self._authorize(request)
        record = self._record(video_id)
        state = self._store.state(video_id)
        if await self._hold_until_finished(video_id, state):
            state = self._store.state(video_id)
        return self._video_response(record, state)

    async def _hold_until_finished(self, video_id: str, state: JobState) -> bool:
        """Wait (up to `hold_poll_ms`) for a job this replica runs that is about to finish; True if it finished.

        A client that polls at the hint would otherwise learn of the end up to one poll interval late, which on a
        short generation is a noticeable share of its latency. Only this replica knows when its dispatch returns,
        so jobs dispatched by another ingress replica are answered at once.
        """
        task = self._dispatched.get(video_id)
        hold_s = self._config.hold_poll_ms / 1000
        remaining = state.remaining_s(time.time())
        if task is None or hold_s <= 0 or remaining is None or remaining > hold_s:
            return False
        done, _ = await asyncio.wait({task}, timeout=hold_s)  # never cancels the job's task
        return bool(done)

    @app.delete("/v1/videos/{video_id}")
    async def delete_video(self, request: Request, video_id: str) -> VideoDeleted:
        self._authorize(request)
        self._record(video_id)
        response = self._responses.get(video_id)
        if response is not None:
            response.cancel()
        await asyncio.to_thread(self._store.delete, video_id)
        return VideoDeleted(id=video_id)

    @app.get("/v1/videos/{video_id}/content")
    async def download_content(
        self, request: Request, video_id: str, variant: Literal["video", "thumbnail", "spritesheet"] = "video"
    ) -> Response:
        self._authorize(request)
        state = self._store.state(self._record(video_id).id)
        if state.status != "completed":
            raise APIError(
                409,
                f"video {video_id!r} is {state.status}, not completed; poll GET /v1/videos/{video_id} until "
                "status is 'completed'",
                param="video_id",
                code="video_not_ready",
            )
        data = await asyncio.to_thread(self._store.content, video_id, variant)
        if data is None:
            raise server_error(f"video {video_id!r} is completed but its {variant} is missing from the store")
        fmt = CONTENT_FORMATS[variant]
        return Response(
            data,
            media_type=MIME_TYPES[fmt],
            headers={"content-disposition": f'attachment; filename="{video_id}.{fmt}"'},
        )

