"""Canonical JSON and content addresses: the keys by which replay matches task calls."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any

import pytest

from aiki_client.wire import canonical_json, content_hash, task_address


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": True}]}) == '{"a":[1,{"c":true,"d":null}],"b":1}'


def test_key_order_does_not_matter() -> None:
    one = {"email": "a@b.c", "profile": {"age": 3, "tags": ["x", "y"]}}
    two = {"profile": {"tags": ["x", "y"], "age": 3}, "email": "a@b.c"}

    assert canonical_json(one) == canonical_json(two)
    assert content_hash(one) == content_hash(two)
    assert task_address("t", one) == task_address("t", two)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"a": 1}, {"a": 2}),
        ({"a": 1}, {"b": 1}),
        ([1, 2], [2, 1]),
        ("1", 1),
        (None, {}),
        ([], {}),
        (True, 1),
        ("", None),
        ({"a": None}, {}),
        ("a b", "a  b"),
    ],
)
def test_different_values_hash_differently(left: Any, right: Any) -> None:
    assert canonical_json(left) != canonical_json(right)
    assert content_hash(left) != content_hash(right)


def test_same_input_under_different_names_has_different_addresses() -> None:
    assert task_address("a", {"x": 1}) != task_address("b", {"x": 1})


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        {"x": float("nan")},
        {1, 2},
        frozenset(),
        object(),
        b"bytes",
        Decimal("1.5"),
        {"nested": [{"deep": {1}}]},
    ],
)
def test_values_json_cannot_carry_raise(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(bad)
    with pytest.raises((TypeError, ValueError)):
        content_hash(bad)
    with pytest.raises((TypeError, ValueError)):
        task_address("t", bad)


def test_unicode_is_kept_as_is_and_hashed_as_utf8() -> None:
    value = {"name": "Zoë 東京 🚀"}
    text = canonical_json(value)

    assert text == '{"name":"Zoë 東京 🚀"}'
    assert content_hash(value) == hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def test_unicode_normalisation_forms_are_different_values() -> None:
    # No silent normalisation: what the workflow passed is what gets hashed.
    assert content_hash("\u00e9") != content_hash("e\u0301")


def test_hashes_are_pinned() -> None:
    """Changing these breaks the replay of every recorded run: they must never change by accident."""
    assert content_hash({"email": "a@b.c"}) == hashlib.sha256(b'{"email":"a@b.c"}').hexdigest()[:32]
    assert content_hash(None) == "74234e98afe7498fb5daf1f36ac2d78a"
    assert content_hash({"b": [1, 2.5, "é"], "a": None}) == "21fddaeebc6c84f1b55624c41336b0e5"


def test_content_hash_is_32_lowercase_hex() -> None:
    for value in (None, 0, "", [], {}, {"k": "v" * 10_000}):
        assert re.fullmatch(r"[0-9a-f]{32}", content_hash(value))


def test_task_address_format() -> None:
    address = task_address("create-profile", {"email": "a@b.c"})

    assert re.fullmatch(r"create-profile:[0-9a-f]{32}", address)
    assert address == "create-profile:" + content_hash({"email": "a@b.c"})


def test_task_address_keeps_names_with_colons_and_unicode() -> None:
    address = task_address("ns:étape", [1])

    assert address.startswith("ns:étape:")
    assert re.fullmatch(r"[0-9a-f]{32}", address.rsplit(":", 1)[1])
