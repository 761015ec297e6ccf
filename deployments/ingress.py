"""The HTTP ingress: the OpenAI Videos API (`/v1/videos`, `/v1/models`) over FastAPI, through `@serve.ingress`.

It maps HTTP and nothing else: a `POST /v1/videos` body is read and type-checked (`VideoCreateBody`), mapped onto a
`GenerationRequest` (`pab.runtime.request.api`) and resolved against the served model's card
(`pab.runtime.request.resolve`, which checks every limit, model and split constraint once); the job record is stored
and handed to the dispatcher (`deployments.dispatch`), which follows it to its end. Jobs live in the store, so any
ingress replica answers for any job.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures of the Serve ingress class at runtime.
import asyncio
import contextlib
import logging
import secrets
import time
from typing import Annotated, Any, Iterator, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pab.runtime.request.api import request_fields
from pab.runtime.request.params import RequestError
from pab.runtime.request.request import PIXEL_FIELDS
from pab.runtime.request.conditioning import SourceVideo
from pab.runtime.request.resolve import check_conditioning, refuse_reference, resolve
from pab.runtime.video import MIME_TYPES
from serve_app.auth import Authenticator
from serve_app.cards import CardCache
from serve_app.config import AppConfig
from serve_app.errors import APIError, from_request_error, invalid, not_found, queue_full, server_error
from serve_app.http_body import FORM_TYPE, check_content_type, form_fields, parse_json
from serve_app.openapi import CONTENT_RESPONSE, HEALTH_RESPONSES, describe, errors
from serve_app.quality import PresetChooser
from serve_app.retention import RetentionSweeper
from serve_app.references import reference_bytes, reference_image
from serve_app.schemas import (
    CONTENT_FORMATS, GenerationRequest, Model, ModelList, Video, VideoCreateBody, VideoDeleted, VideoList,
    VideoRemixBody,
)
from serve_app.store import JobRecord, JobState, JobStore, new_job_id
from serve_app.videos import video_object

from . import metrics, playground
from .dispatch import Dispatcher

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "VideoIngress"

app = FastAPI(
    title="pab-serve",
    description="OpenAI-compatible video generation with Pyramid Attention Broadcast.",
    version="0.1.0",
)
describe(app)
app.include_router(playground.router)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, _from_pydantic(exc.errors()))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every method of the path, not only the first route's
        headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
    error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                     headers=headers)
    return await _api_error(request, error)


def _allowed_methods(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, never the client's input: logged with an id that the answer gives, without the exception's text."""
    request_id = f"req_{secrets.token_hex(8)}"
    logger.error("pab: unexpected error %s in %s %s", request_id, request.method, request.url.path, exc_info=exc)
    error = server_error(f"internal error (request id {request_id}); the server logged the details under this id")
    return await _api_error(request, error)


@contextlib.contextmanager
def _request_errors(frames_from_seconds: bool = False) -> Iterator[None]:
    """Resolver and model errors as 4xx naming the field the client sent."""
    try:
        yield
    except APIError:  # already the client's answer (an InvalidRequestError is also a ValueError)
        raise
    except ValidationError as exc:
        raise _from_pydantic(exc.errors()) from None
    except RequestError as exc:
        raise from_request_error(exc, frames_from_seconds=frames_from_seconds) from None
    except ValueError as exc:  # an unreadable size
        raise invalid(str(exc), param="size") from None


def _from_pydantic(errors: Any) -> APIError:
    """The first pydantic error as a 400 naming the field."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = loc[0] if loc else None
    return invalid(f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid value')}", param=param)


async def _read_body(request: Request, max_upload_bytes: int) -> dict[str, Any]:
    """A create (or remix) body, from JSON or the multipart form the openai SDK sends, as a plain dict of fields; a
    file part (`input_reference`) becomes its bytes, of which at most `max_upload_bytes` + 1 are read."""
    if check_content_type(request.headers.get("content-type")) == FORM_TYPE:
        form = await request.form()
        items = [(k, await v.read(max_upload_bytes + 1) if isinstance(v, UploadFile) else v)
                 for k, v in form.multi_items()]
        return form_fields(items)
    return parse_json(await request.body())


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class VideoIngress:
    async def __init__(self, generator: DeploymentHandle, config: AppConfig) -> None:
        self._config = config
        self._store = JobStore.from_config(config.storage)
        self._auth = Authenticator(config)
        self._cards = CardCache(self._store, config.card_key(), config.model_name, started_at=int(time.time()))
        self._presets = PresetChooser(self._store, config)  # the quality watch's fallback for jobs naming no preset
        app.state.playground = playground.Playground(self._cards, self._auth, config, self._presets)
        self._dispatcher = Dispatcher(generator, self._store, config)
        self._background = self._dispatcher.start()
        if config.storage.retention_s is not None:
            self._background.append(asyncio.create_task(RetentionSweeper(self._store, config.storage.sweep_period_s).run()))

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> str | None:
        """The caller's tenant (None when auth is off), or a 401; keys are compared in constant time."""
        return self._auth.tenant_for(request.headers.get("authorization"))

    def _video_response(self, record: JobRecord, state: JobState) -> JSONResponse:
        """The Video, with the `openai-poll-after-ms` hint the SDK's poll loop honours while the job is unfinished."""
        headers = {}
        if not state.terminal:
            cfg = self._config
            headers["openai-poll-after-ms"] = str(state.poll_after_ms(time.time(), cfg.min_poll_after_ms, cfg.poll_after_ms))
        return JSONResponse(self._video(record, state).model_dump(mode="json"), headers=headers)

    def _video(self, record: JobRecord, state: JobState) -> Any:
        return video_object(record, state, expires_at=self._store.expires_at(record, state))

    def _record(self, video_id: str, tenant: str | None) -> JobRecord:
        """The job's record, or a 404 when it does not exist or belongs to another tenant."""
        record = self._store.record(video_id)
        if record is None or not record.owned_by(tenant):
            raise not_found("video", video_id, param="video_id")
        return record

    def _resolve(self, create: VideoCreateBody) -> GenerationRequest:
        """The body as a fully resolved `GenerationRequest`, or a 4xx naming the field the client sent. A reference
        image is read, checked and fitted after the size is resolved (defaults filled), then checked again with it."""
        card = self._cards.get()
        body = create.model_dump(exclude={"input_reference"})
        with _request_errors(frames_from_seconds=create.frames is None and create.seconds is not None):
            if create.input_reference is not None:
                refuse_reference(card)  # before anything is fetched or decoded
            fields = request_fields(body, lambda s, fps: card.frames_for_seconds(s, fps or card.defaults["fps"]))
            request = resolve(GenerationRequest(**fields), card, default_pab=self._presets.default_preset(),
                              limits=self._config.limits)
            if create.input_reference is None:
                return request
            data = reference_bytes(create.input_reference, self._config.references)
            image = reference_image(data, request.width, request.height, self._config.references)
            request = request.model_copy(update={"input_reference": image})
            check_conditioning(card, request)
            return request

    def _remix_request(self, source: JobRecord, state: JobState, remix: VideoRemixBody) -> GenerationRequest:
        """The source's resolved request with the new prompt and its exact frames to edit (`SourceVideo`)."""
        if state.status != "completed":
            raise APIError(409, f"video {source.id!r} is {state.status}; only a completed video can be remixed",
                           param="video_id", code="video_not_ready")
        png = self._store.frames(source.id)
        if png is None:
            raise APIError(409, f"video {source.id!r} has no lossless frames stored (it finished before this server "
                           "kept them); generate it again to remix it", param="video_id", code="video_not_remixable")
        card = self._cards.get()
        old = source.request
        with _request_errors():
            strength = {"strength": remix.strength} if remix.strength is not None else {}
            video = SourceVideo.from_png(source.id, png, old.num_frames, **strength)
            fields = old.model_dump(exclude=set(PIXEL_FIELDS))  # the source's own conditioning is not the remix's
            request = GenerationRequest.model_validate({**fields, "prompt": remix.prompt, "remix": video})
            return resolve(request, card, default_pab=self._presets.default_preset(), limits=self._config.limits)

    async def _accept(self, resolved: GenerationRequest, tenant: str | None) -> JSONResponse:
        """Queue limits, then the job record (the ingress's only write of it, its pixels in files of their own: a
        remix's copy of its source frames too, so it runs even once the source is deleted), then dispatch."""
        self._check_queue(tenant)
        submitted = time.time()
        stored, pixels = resolved.detach()
        record = JobRecord(id=new_job_id(), created_at=int(submitted), submitted_at=submitted, request=stored,
                           tenant=tenant)
        self._dispatcher.admitting += 1  # holds the queue slot across the await, so a burst cannot overshoot
        try:
            await asyncio.to_thread(self._store.create, record, pixels)
        finally:
            self._dispatcher.admitting -= 1
        self._dispatcher.dispatch(record.id, tenant)
        return self._video_response(record, JobState())

    # ---- routes ----------------------------------------------------------------------------------------------
    @app.get("/health", responses=HEALTH_RESPONSES)
    async def health(self) -> JSONResponse:
        """Readiness (no auth: for load balancers and probes): 503 `starting` until a generator replica has published
        the model card, so nothing is sent to a deployment that cannot serve yet; then `ok`."""
        try:
            self._cards.get()
        except APIError:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models", responses=errors(401, 503))
    async def list_models(self, request: Request) -> ModelList:
        self._authorize(request)
        card = self._cards.get()
        return ModelList(data=[Model(id=card.name, created=card.created)])

    @app.post("/v1/videos", response_model=Video, responses=errors(400, 401, 404, 415, 429, 503))
    async def create_video(self, request: Request) -> JSONResponse:
        tenant = self._authorize(request)
        body = await _read_body(request, self._config.references.max_bytes)
        try:
            create = VideoCreateBody.model_validate(body)
        except ValidationError as exc:
            raise _from_pydantic(exc.errors()) from None
        resolved = await asyncio.to_thread(self._resolve, create)  # a reference may be fetched and decoded
        return await self._accept(resolved, tenant)

    @app.post("/v1/videos/{video_id}/remix", response_model=Video, responses=errors(400, 401, 404, 409, 415, 429, 503))
    async def remix_video(self, request: Request, video_id: str) -> JSONResponse:
        """A new job editing a completed video (SDEdit) with a new prompt: same size, frames, steps and seed."""
        tenant = self._authorize(request)
        source = self._record(video_id, tenant)
        body = await _read_body(request, self._config.references.max_bytes)
        try:
            remix = VideoRemixBody.model_validate(body)
        except ValidationError as exc:
            raise _from_pydantic(exc.errors()) from None
        state = self._store.state(source.id)
        resolved = await asyncio.to_thread(self._remix_request, source, state, remix)
        return await self._accept(resolved, tenant)

    def _check_queue(self, tenant: str | None) -> None:
        """Back-pressure: 429 + Retry-After before a job exists once this replica holds `queue.max_jobs` jobs, or
        the tenant its `max_queued_jobs`."""
        limit, in_flight = self._config.queue, self._dispatcher.in_flight
        if limit.max_jobs is not None and in_flight >= limit.max_jobs:
            metrics.record_job_rejected("queue_full")
            raise queue_full(in_flight, limit.max_jobs, limit.retry_after_s)
        try:
            self._auth.check_queued(tenant, self._dispatcher.in_flight_of(tenant))
        except APIError:
            metrics.record_job_rejected("tenant_queue_full")
            raise

    @app.get("/v1/videos", responses=errors(400, 401))
    async def list_videos(
        self,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> VideoList:
        tenant = self._authorize(request)
        records, has_more = await asyncio.to_thread(self._store.page, after=after, limit=limit, order=order,
                                                    tenant=tenant)
        data = [self._video(r, self._store.state(r.id)) for r in records]
        return VideoList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)

    @app.get("/v1/videos/{video_id}", response_model=Video, responses=errors(401, 404))
    async def retrieve_video(self, request: Request, video_id: str) -> JSONResponse:
        record = self._record(video_id, self._authorize(request))
        state = self._store.state(video_id)
        if await self._dispatcher.hold_until_finished(video_id, state, self._config.hold_poll_ms / 1000):
            state = self._store.state(video_id)
        return self._video_response(record, state)

    @app.delete("/v1/videos/{video_id}", responses=errors(401, 404))
    async def delete_video(self, request: Request, video_id: str) -> VideoDeleted:
        self._record(video_id, self._authorize(request))
        await asyncio.to_thread(self._store.delete, video_id)  # first: a runner never writes a deleted job
        self._dispatcher.cancel(video_id)
        return VideoDeleted(id=video_id)

    @app.get("/v1/videos/{video_id}/content", response_class=Response,
             responses={**CONTENT_RESPONSE, **errors(400, 401, 404, 409)})
    async def download_content(
        self, request: Request, video_id: str, variant: Literal["video", "thumbnail", "spritesheet"] = "video"
    ) -> Response:
        state = self._store.state(self._record(video_id, self._authorize(request)).id)
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
