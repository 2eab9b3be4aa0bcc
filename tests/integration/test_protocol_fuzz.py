"""Property-based tests of the protocol boundary (signaling/protocol.py) with Hypothesis.

Whatever a client sends, parsing either returns a message that is safe to pass on (valid
Unicode throughout, bounded nesting, finite numbers, every field of its type) or raises
ProtocolError with a documented code: never anything else. Every message type is covered:
valid instances parse, and each required field dropped or given a wrong type is refused.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.protocol import (
    CLIENT_MESSAGES,
    CONTACT_FIELDS,
    DEVICE_FIELDS,
    KINDS,
    LAYOUT_TILE_FIELDS,
    MAX_TILE_PIXELS,
    RESUME_FIELDS,
    ProtocolError,
    error,
    parse_client_message,
)

MAX_BYTES = 64 * 1024
MAX_DEPTH = 16
# Every code parse_client_message may give (docs/protocol.md).
PARSE_CODES = {"bad_json", "bad_message", "unknown_type", "message_too_large"}
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value, including the hostile ones: lone surrogates, non-finite numbers, deep nesting.
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _safe(value: Any) -> None:
    """What a parsed message promises everything after the boundary."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _safe(item)
    elif isinstance(value, list):
        for item in value:
            _safe(item)


def _parse(text: str) -> dict[str, Any] | ProtocolError:
    try:
        message = parse_client_message(text, MAX_BYTES, MAX_DEPTH)
    except ProtocolError as exc:
        assert exc.code in PARSE_CODES, exc.code
        assert exc.message
        # The error reply itself is always valid JSON.
        json.loads(json.dumps(error(exc.code, exc.message, exc.ref), allow_nan=False))
        return exc
    _safe(message)
    assert _depth(message) <= MAX_DEPTH
    json.dumps(message, allow_nan=False).encode("utf-8")
    return message


@FUZZ
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_with_a_code(text: str) -> None:
    _parse(text)


@FUZZ
@given(json_values)
def test_any_json_value_parses_or_is_refused_with_a_code(value: Any) -> None:
    _parse(json.dumps(value))


@FUZZ
@given(st.sampled_from(sorted(CLIENT_MESSAGES)), st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_fields_on_any_type_parse_or_are_refused(kind: str, fields: dict[str, Any]) -> None:
    _parse(json.dumps({**fields, "type": kind}))


@FUZZ
@given(st.integers(min_value=MAX_DEPTH + 1, max_value=10_000), st.booleans())
def test_nesting_beyond_the_limit_is_bad_message(depth: int, arrays: bool) -> None:
    opened, closed = ("[", "]") if arrays else ('{"a":', "}")
    inner = opened * (depth - 1) + "1" + closed * (depth - 1)
    result = _parse('{"type": "ping", "x": ' + inner + "}")
    assert isinstance(result, ProtocolError) and result.code == "bad_message"


@FUZZ
@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "[NaN]", '{"a": Infinity}']))
def test_non_finite_numbers_are_bad_message(number: str) -> None:
    result = _parse('{"type": "ping", "ts": ' + number + "}")
    assert isinstance(result, ProtocolError) and result.code == "bad_message"


# --- every message type --------------------------------------------------------------------

safe_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)
PY_TYPES: dict[Any, st.SearchStrategy[Any]] = {
    int: st.integers(min_value=-(2**53), max_value=2**53),
    float: st.floats(allow_nan=False, allow_infinity=False),
    str: safe_text,
    bool: st.booleans(),
    dict: st.dictionaries(safe_text, st.one_of(st.booleans(), safe_text, st.integers()), max_size=4),
    type(None): st.none(),
    # Lists have their own shapes (layout's tiles, below); empty is valid wherever one is.
    list: st.just([]),
}
# Values that are of no field's type but its own.
WRONG: dict[Any, list[Any]] = {
    int: ["1", 1.5, None, True, [], {}],
    str: [1, None, True, [], {}],
    bool: [1, 0, "true", None, [], {}],
    dict: [1, "x", None, True, []],
    list: [1, "x", None, True, {}],
}


def _value(expected: Any) -> st.SearchStrategy[Any]:
    if isinstance(expected, tuple):
        return st.one_of(*(PY_TYPES[t] for t in expected))
    return PY_TYPES[expected]


def _fields(schema: dict[str, tuple[Any, bool]]) -> st.SearchStrategy[dict[str, Any]]:
    required = {name: _value(t) for name, (t, needed) in schema.items() if needed}
    optional = {name: _value(t) for name, (t, needed) in schema.items() if not needed}
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def valid_messages(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    schema = CLIENT_MESSAGES[kind]
    if kind == "hello":
        message: dict[str, Any] = {"v": draw(st.integers(0, 3))}
        which = draw(st.sampled_from(["token", "device", "contact"]))
        if which == "token":
            message["token"] = draw(safe_text)
            if draw(st.booleans()):
                message["resume"] = draw(_fields(RESUME_FIELDS))
        elif which == "device":
            message["device"] = draw(_fields(DEVICE_FIELDS))
        else:
            message["contact"] = draw(_fields(CONTACT_FIELDS))
    else:
        message = draw(_fields(schema))
    if "kind" in message:
        message["kind"] = draw(st.sampled_from(KINDS))
    if kind == "layout":
        tile = st.fixed_dictionaries({
            "participant_id": safe_text,
            "width": st.integers(0, MAX_TILE_PIXELS),
            "height": st.integers(0, MAX_TILE_PIXELS),
        })
        assert set(LAYOUT_TILE_FIELDS) == {"participant_id", "width", "height"}
        message["tiles"] = draw(st.lists(tile, max_size=5))
    if kind == "join":
        message["room"] = draw(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=128))
    if draw(st.booleans()):
        message["id"] = draw(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=64))
    message["type"] = kind
    return message


@pytest.mark.parametrize("kind", sorted(CLIENT_MESSAGES))
@FUZZ
@given(data=st.data())
def test_every_type_valid_messages_parse(kind: str, data: st.DataObject) -> None:
    message = data.draw(valid_messages(kind))
    parsed = _parse(json.dumps(message))
    assert parsed == message


@pytest.mark.parametrize("kind", sorted(k for k, schema in CLIENT_MESSAGES.items() if schema))
@FUZZ
@given(data=st.data())
def test_every_type_a_missing_or_wrong_field_is_bad_message(kind: str, data: st.DataObject) -> None:
    message = data.draw(valid_messages(kind))
    present = [name for name in CLIENT_MESSAGES[kind] if name in message]
    if not present:
        return
    name = data.draw(st.sampled_from(present))
    expected, required = CLIENT_MESSAGES[kind][name]
    if data.draw(st.booleans()) and required:
        del message[name]
    else:
        types = expected if isinstance(expected, tuple) else (expected,)
        candidates = [w for t in types for w in WRONG.get(t, []) if not any(
            isinstance(w, ok) and not (isinstance(w, bool) and bool not in types) for ok in types
        )]
        message[name] = data.draw(st.sampled_from(candidates))
    result = _parse(json.dumps(message))
    assert isinstance(result, ProtocolError) and result.code == "bad_message", (message, result)


def _with_lone_surrogate(value: Any, path: list[Any], surrogate: str) -> Any:
    if not path:
        return value + surrogate if isinstance(value, str) else surrogate
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _with_lone_surrogate(value[head], rest, surrogate)
    return copy


def _string_paths(value: Any, path: list[Any]) -> list[list[Any]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() if key != "type" for p in _string_paths(item, path + [key])]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _string_paths(item, path + [i])]
    return []


@pytest.mark.parametrize("kind", sorted(CLIENT_MESSAGES))
@FUZZ
@given(data=st.data(), surrogate=st.integers(0xD800, 0xDFFF).map(chr))
def test_every_type_a_lone_surrogate_in_any_string_is_bad_message(
    kind: str, data: st.DataObject, surrogate: str
) -> None:
    message = data.draw(valid_messages(kind))
    paths = _string_paths(message, [])
    if not paths:
        return
    path = data.draw(st.sampled_from(paths))
    hostile = _with_lone_surrogate(message, path, surrogate)
    result = _parse(json.dumps(hostile))
    assert isinstance(result, ProtocolError) and result.code == "bad_message", (hostile, result)


# Nested containers of safe scalars, up to twice the limit deep, with shallow siblings.
safe_scalars = st.one_of(st.integers(), st.booleans(), safe_text)
shallow = st.one_of(safe_scalars, st.lists(safe_scalars, max_size=2), st.dictionaries(safe_text, safe_scalars, max_size=2))


@st.composite
def nested_to_depth(draw: st.DrawFn) -> Any:
    value = draw(safe_scalars)
    for _ in range(draw(st.integers(1, 2 * MAX_DEPTH))):
        siblings = draw(st.lists(shallow, max_size=2))
        if draw(st.booleans()):
            siblings.insert(draw(st.integers(0, len(siblings))), value)
            value = siblings
        else:
            value = {**{f"s{i}": sibling for i, sibling in enumerate(siblings)}, draw(safe_text): value}
    return value


@FUZZ
@given(nested_to_depth())
def test_nesting_is_accepted_exactly_up_to_the_limit(value: Any) -> None:
    message = {"type": "ping", "x": value}
    result = _parse(json.dumps(message))
    if _depth(message) <= MAX_DEPTH:
        assert result == message
    else:
        assert isinstance(result, ProtocolError) and result.code == "bad_message"
