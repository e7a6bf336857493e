"""Request parsing: turn a body into checked values or a 400 that says exactly what is wrong."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson
from sanic.request import Request

from aiki_client.wire import MAX_BODY_BYTES, ErrorCode

from .. import errors

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_NAME = 200


# A run of 19+ digits may be an integer beyond 64 bits, which orjson would round to a float.
_LONG_NUMBER = re.compile(rb"\d{19,}")
_INT64 = range(-(2**63), 2**64)


def _exact_int(text: str) -> int:
    value = int(text)
    if value not in _INT64:
        raise errors.invalid(f"integer {text[:30]}… is beyond 64 bits: send it as a string")
    return value


def body_object(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    if len(request.body) > MAX_BODY_BYTES:
        raise errors.ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        if _LONG_NUMBER.search(request.body):
            body = json.loads(request.body, parse_int=_exact_int)  # exact, and refuses what it cannot keep
        else:
            body = orjson.loads(request.body)
    except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, errors.ApiError):
            raise
        raise errors.invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.invalid(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _missing(name: str) -> errors.ApiError:
    return errors.invalid(f"{name!r} is required")


def text(body: dict[str, Any], name: str, *, required: bool = True, max_len: int = _MAX_NAME) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str) or not value:
        raise errors.invalid(f"{name!r} must be a non-empty string")
    if len(value) > max_len:
        raise errors.invalid(f"{name!r} is longer than {max_len} characters")
    if any(ch < " " for ch in value):
        raise errors.invalid(f"{name!r} must not contain control characters")
    return value


def required_text(body: dict[str, Any], name: str, *, max_len: int = _MAX_NAME) -> str:
    value = text(body, name, max_len=max_len)
    assert value is not None
    return value


def identifier(value: str, name: str) -> str:
    if not _ID.match(value):
        raise errors.invalid(f"{name!r} must be 1-128 letters, digits or ._:- (got {value[:40]!r})")
    return value


def texts(
    body: dict[str, Any], name: str, *, required: bool = False, max_items: int = 10_000, max_len: int = _MAX_NAME
) -> list[str]:
    """A JSON array of non-empty strings, each checked like `text`."""
    return [
        required_text({f"{name}[{i}]": item}, f"{name}[{i}]", max_len=max_len)
        for i, item in enumerate(array(body, name, required=required, max_items=max_items))
    ]


def integer(
    body: dict[str, Any], name: str, *, required: bool = False, minimum: int = 0, maximum: int = 2**62
) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.invalid(f"{name!r} must be an integer")
    if not minimum <= value <= maximum:
        raise errors.invalid(f"{name!r} must be between {minimum} and {maximum}")
    return value


def required_int(body: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
    value = integer(body, name, required=True, minimum=minimum, maximum=maximum)
    assert value is not None
    return value


def obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.invalid(f"{name!r} must be a JSON object")
    return value


def array(body: dict[str, Any], name: str, *, required: bool = True, max_items: int = 10_000) -> list[Any]:
    value = body.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return []
    if not isinstance(value, list):
        raise errors.invalid(f"{name!r} must be a JSON array")
    if len(value) > max_items:
        raise errors.invalid(f"{name!r} has more than {max_items} items")
    return value


def json_text(value: Any) -> str:
    """A JSON value as stored text (canonical: sorted keys), refusing what JSON cannot hold."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise errors.invalid(f"not a storable JSON value: {exc}") from None


def input_hash(input_json: str) -> str:
    """What makes two starts "the same input": the hash of the canonical JSON text."""
    return hashlib.sha256(input_json.encode()).hexdigest()


def query_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.invalid(f"query parameter {name!r} must be an integer") from None
    if not minimum <= value <= maximum:
        raise errors.invalid(f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value
