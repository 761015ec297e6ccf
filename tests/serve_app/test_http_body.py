"""Reading the create body off the wire without a server: content types, JSON without non-finite numbers or deep
nesting, and the SDK's multipart bracket notation for nested fields."""

from __future__ import annotations

import pytest

from serve_app.errors import APIError
from serve_app.http_body import MAX_DEPTH, check_content_type, form_fields, parse_json


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "multipart/form-data; boundary=x"])
def test_json_and_multipart_are_read(content_type):
    assert check_content_type(content_type) in ("application/json", "multipart/form-data")


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded", "image/png"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(APIError) as info:
        check_content_type(content_type)
    assert info.value.status_code == 415 and info.value.param == "Content-Type"
    assert "application/json or multipart/form-data" in info.value.message


@pytest.mark.parametrize("raw", [b'{"prompt": "a", "seconds": Infinity}', b'{"prompt": "a", "seconds": NaN}',
                                 b'{"prompt": "a", "seconds": -Infinity}', b"[1]", b"not json", b"\xff"])
def test_bad_json_is_400(raw):
    with pytest.raises(APIError) as info:
        parse_json(raw)
    assert info.value.status_code == 400 and info.value.code == "invalid_json"


def test_deep_nesting_is_400_naming_the_field():
    for depth in (MAX_DEPTH + 1, 5000):
        raw = b'{"prompt": "a", "pab": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
        with pytest.raises(APIError) as info:
            parse_json(raw)
        assert info.value.status_code == 400 and "nested too deeply" in info.value.message
    ok = b'{"prompt": "a", "pab": {"preset": "PAB-246", "spatial": {"range": 3}}}'
    assert parse_json(ok)["pab"]["spatial"]["range"] == 3


def test_the_sdks_bracket_notation_becomes_nested_fields():
    from openai._qs import Querystring  # exactly what the SDK sends for extra_body={"pab": {...}}

    pab = {"preset": "PAB-357", "spatial": {"range": 3, "window": [100, 800]}, "name": "mine"}
    items = [("prompt", "a red square moving left"), ("seconds", "1"), ("size", ""),
             *Querystring().stringify_items({"pab": pab}, array_format="brackets"), ("pab[mlp]", "null")]
    assert form_fields(items) == {"prompt": "a red square moving left", "seconds": "1", "pab": {**pab, "mlp": None}}
    for bad in ([("pab", "PAB-246"), ("pab[spatial]", "3")], [("pab[][x]", "1")], [("a" + "[b]" * 40, "1")],
                [("pab[spatial][range]", "3"), ("pab[spatial][range][x]", "1")]):
        with pytest.raises(APIError) as info:
            form_fields(bad)
        assert info.value.status_code == 400
