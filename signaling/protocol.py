"""Signalling protocol v1: message shapes, validation and error codes (docs/protocol.md)."""

from __future__ import annotations

import json
from typing import Any

VERSION = 1
MAX_ID_LENGTH = 64
MAX_ROOM_LENGTH = 128
KINDS = ("audio", "video")


class ProtocolError(Exception):
    """A client message was refused; `code` is the protocol error code."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


class CloseCode:
    NORMAL = 1000
    TOO_BIG = 1009
    PING_TIMEOUT = 4000
    AUTH_FAILED = 4001
    HELLO_TIMEOUT = 4002
    REMOVED = 4003
    REPLACED = 4004
    MEDIA_FAILED = 4005
    DENIED = 4006


_OPTIONAL = object()

# type → {field: (python type(s), required)}
CLIENT_MESSAGES: dict[str, dict[str, tuple[Any, bool]]] = {
    "hello": {
        "v": (int, True), "token": (str, False), "device": (dict, False), "contact": (dict, False),
        "resume": (dict, False),
    },
    "join": {"room": (str, True)},
    "publish": {"audio": (bool, True), "video": (bool, True)},
    "unpublish": {"kind": (str, True)},
    "answer": {"sdp": (str, True), "negotiation_id": (int, True)},
    "mute": {"kind": (str, True), "muted": (bool, True), "participant_id": (str, False)},
    "kick": {"participant_id": (str, True)},
    "leave": {},
    "ping": {"ts": ((int, float), False)},
    # moderation
    "admit": {"participant_id": (str, True)},
    "deny": {"participant_id": (str, True)},
    "lock": {"locked": (bool, True)},
    "mute_all": {"kind": (str, True)},
    "ask_unmute": {"participant_id": (str, True), "kind": (str, True)},
    "spotlight": {"participant_id": ((str, type(None)), True)},
    "music_mode": {"enabled": (bool, True)},
    "end": {},
    # what this participant shows: per-subscriber layer selection
    "layout": {"tiles": (list, True)},
    # kiosk devices
    "call_answer": {"call_id": (str, True), "accept": (bool, True), "reason": (str, False)},
    "activity_join": {"activity_id": (str, True)},
    "selftest_result": {"result": (dict, True)},
    "call_contact": {"contact_id": (str, True)},
    "call_hangup": {"call_id": (str, True)},
    # family members listening on their invite page
    "missed_seen": {},
}

# Messages only a kiosk device or a listening family page may send.
DEVICE_ONLY = ("call_answer", "activity_join", "selftest_result", "call_contact", "call_hangup", "missed_seen")

DEVICE_FIELDS: dict[str, tuple[Any, bool]] = {
    "kiosk_id": (str, True),
    "credential": (str, True),
}

CONTACT_FIELDS: dict[str, tuple[Any, bool]] = {
    "invite": (str, True),
}

LAYOUT_TILE_FIELDS: dict[str, tuple[Any, bool]] = {
    "participant_id": (str, True),
    "width": (int, True),
    "height": (int, True),
}
# A tile larger than this (8K) is not a tile.
MAX_TILE_PIXELS = 8192

RESUME_FIELDS: dict[str, tuple[Any, bool]] = {
    "session_id": (str, True),
    "resume_key": (str, True),
    "last_seq": (int, True),
}


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {
        int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array",
        type(None): "null",
    }[t]


def _check_fields(
    message: dict[str, Any], schema: dict[str, tuple[Any, bool]], where: str, ref: str | None
) -> None:
    for name, (expected, required) in schema.items():
        if name not in message:
            if required:
                raise ProtocolError("bad_message", f"{where}: field '{name}' is missing.", ref)
            continue
        value = message[name]
        # bool is an int in Python; an int field must not accept true/false.
        wrong_bool = isinstance(value, bool) and expected is not bool and bool not in (
            expected if isinstance(expected, tuple) else (expected,)
        )
        if wrong_bool or not isinstance(value, expected):
            raise ProtocolError(
                "bad_message",
                f"{where}: field '{name}' must be a {_type_name(expected)}.",
                ref,
            )


def parse_client_message(text: str | bytes, max_bytes: int) -> dict[str, Any]:
    """Decodes and validates one client frame; raises ProtocolError with the right code."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise ProtocolError(
            "message_too_large", f"The message is {size} bytes; the limit is {max_bytes}."
        )
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_json", "The message is not valid JSON.") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_json", "The message must be a JSON object.")
    ref = message.get("id")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_ID_LENGTH):
        raise ProtocolError(
            "bad_message", f"Field 'id' must be a string of at most {MAX_ID_LENGTH} characters."
        )
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "Field 'type' is missing or not a string.", ref)
    schema = CLIENT_MESSAGES.get(kind)
    if schema is None:
        raise ProtocolError("unknown_type", f"Unknown message type '{kind[:40]}'.", ref)
    _check_fields(message, schema, kind, ref)
    if kind == "hello":
        if sum(key in message for key in ("token", "device", "contact")) != 1:
            raise ProtocolError("bad_message", "hello: send one of 'token', 'device' or 'contact'.", ref)
        if "resume" in message:
            _check_fields(message["resume"], RESUME_FIELDS, "hello.resume", ref)
        if "device" in message:
            _check_fields(message["device"], DEVICE_FIELDS, "hello.device", ref)
        if "contact" in message:
            _check_fields(message["contact"], CONTACT_FIELDS, "hello.contact", ref)
    if kind in ("unpublish", "mute", "mute_all", "ask_unmute") and message["kind"] not in KINDS:
        raise ProtocolError("bad_message", f"{kind}: field 'kind' must be 'audio' or 'video'.", ref)
    if kind == "layout":
        for i, tile in enumerate(message["tiles"]):
            if not isinstance(tile, dict):
                raise ProtocolError("bad_message", f"layout: tiles[{i}] must be an object.", ref)
            _check_fields(tile, LAYOUT_TILE_FIELDS, f"layout.tiles[{i}]", ref)
            if not (0 <= tile["width"] <= MAX_TILE_PIXELS and 0 <= tile["height"] <= MAX_TILE_PIXELS):
                raise ProtocolError(
                    "bad_message", f"layout: tiles[{i}] width and height must be 0 to {MAX_TILE_PIXELS}.", ref
                )
    if kind == "join" and not (0 < len(message["room"]) <= MAX_ROOM_LENGTH):
        raise ProtocolError("bad_message", "join: field 'room' must not be empty.", ref)
    return message


def error(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "ref": ref}
