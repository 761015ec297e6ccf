"""The create body off the wire: its content type, JSON with no non-finite numbers and bounded nesting, or the
multipart form the openai SDK sends, whose nested fields arrive in bracket notation (`pab[spatial][range]=3`).

Every refusal is a 4xx in the OpenAI error shape naming the field; nothing here can answer 500.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from .errors import APIError, invalid

JSON_TYPE = "application/json"
FORM_TYPE = "multipart/form-data"
MAX_DEPTH = 16
"""Nesting levels a body may have (a PAB override object needs 3)."""

_BRACKETS = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])+)$")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """The body's media type if the API reads it, else a 415: a page on another origin can send a CORS-simple
    `text/plain` body without asking, never `application/json`."""
    kind = media_type(content_type)
    if kind not in (JSON_TYPE, FORM_TYPE):
        raise APIError(
            415, f"Content-Type must be {JSON_TYPE} or {FORM_TYPE} (the openai SDK sends one of them), got "
            f"{kind or 'none'!r}", param="Content-Type", code="unsupported_media_type",
        )
    return kind


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object body; `NaN`/`Infinity` and nesting past `MAX_DEPTH` are refused with a 400."""
    try:
        body = json.loads(raw or b"null", parse_constant=_reject_constant)
    except RecursionError:
        raise invalid(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise invalid(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with at least a 'prompt' field", code="invalid_json")
    check_depth(body)
    return body


def check_depth(body: dict[str, Any]) -> None:
    """Refuse a field nested deeper than `MAX_DEPTH` (naming it), without recursion."""
    for field, value in body.items():
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise invalid(f"{field}: nested too deeply (at most {MAX_DEPTH} levels)", param=field)
            if isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list):
                stack.extend((v, depth + 1) for v in item)


def _scalar(text: str) -> Any:
    """A nested form value as JSON would give it: `null`, booleans and numbers, else the string."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def form_fields(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Multipart fields as a dict, nested as the openai SDK flattens them: `pab[spatial][range]=3` becomes
    `{"pab": {"spatial": {"range": 3}}}` and repeated `pab[spatial][window][]` a list. Top-level values stay as sent
    (strings or uploads; the body model reads numbers from strings); empty ones are dropped (the SDK sends empty
    optional fields), except `prompt`."""
    fields: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, str) and value == "" and key != "prompt":
            continue
        match = _BRACKETS.match(key)
        if match is None:
            fields[key] = value
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        _place(fields, key, path, _scalar(value) if isinstance(value, str) else value)
    return fields


def _place(fields: dict[str, Any], key: str, path: list[str], value: Any) -> None:
    """Put `value` at `path` (a trailing "" appends to a list)."""
    if len(path) > MAX_DEPTH or any(not part for part in path[:-1]):
        raise invalid(f"{key[:80]}: not a field the API reads (at most {MAX_DEPTH} levels, [] only last)",
                      param=path[0])
    node: Any = fields
    for i, part in enumerate(path[:-1]):
        want: type = list if i == len(path) - 2 and path[-1] == "" else dict
        node = node.setdefault(part, want())
        if not isinstance(node, want):
            raise invalid(f"{key[:80]}: sent both as a value and as an object or a list", param=path[0])
    if path[-1] == "":
        node.append(value)
    elif isinstance(node.get(path[-1]), (dict, list)):
        raise invalid(f"{key[:80]}: sent both as a value and as an object or a list", param=path[0])
    else:
        node[path[-1]] = value
