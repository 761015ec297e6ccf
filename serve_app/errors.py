"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}` with a matching HTTP status.

The openai SDK turns the status into its exception class (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 409 ConflictError, ...) and shows `message`, so every message names the field and what to do.
"""

from __future__ import annotations

from typing import Any

from pab.runtime.request.api import api_name
from pab.runtime.request.params import RequestError


class APIError(Exception):
    """An error the client caused or should see; `to_body()` is what goes on the wire."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with every field, so the error crosses Ray (a replica raising it to a handle caller) intact."""
        return _rebuild, (type(self), self.status_code, self.message, self.type, self.param, self.code)


def _rebuild(cls: type[APIError], status_code: int, message: str, type: str, param: str | None, code: str | None):
    return cls(status_code, message, type=type, param=param, code=code)


class InvalidRequestError(APIError, ValueError):
    """A 400: the request itself is wrong (a `ValueError` too, for Python callers of the handle API)."""


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(400, message, param=param, code=code)


def from_request_error(exc: RequestError, *, api_names: bool = True, frames_from_seconds: bool = False) -> APIError:
    """The one mapping of a resolver error (`pab.runtime.request.params.RequestError`) onto the wire: its status, code
    and message, with `param` named as the client sent it (API names over HTTP, internal names for handle calls)."""
    param = api_name(exc.field, frames_from_seconds=frames_from_seconds) if api_names else exc.field
    if exc.status == 400:
        return InvalidRequestError(400, str(exc), param=param, code=exc.code)
    return APIError(exc.status, str(exc), param=param, code=exc.code)


def queue_full(in_flight: int, max_jobs: int, retry_after_s: int) -> APIError:
    """The 429 of back-pressure, when `in_flight` jobs have reached `max_jobs`: OpenAI's rate-limit shape."""
    return APIError(
        429,
        f"the server's job queue is full: {in_flight} jobs are waiting or running here, the limit "
        f"queue.max_jobs={max_jobs}; retry after {retry_after_s} s (no job was created for this request)",
        type="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"no {what} with id {ident!r}", type="invalid_request_error", param=param, code="not_found")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def rate_limited(message: str, retry_after_s: int) -> APIError:
    """A 429 in OpenAI's rate-limit shape, with `Retry-After`; no job was created for the request."""
    headers = {"Retry-After": str(retry_after_s)}
    return APIError(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


def server_error(message: str, code: str = "server_error") -> APIError:
    return APIError(500, message, type="server_error", code=code)
