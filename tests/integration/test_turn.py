"""TURN credentials in coturn's REST-API scheme, as clients receive them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from server.config import Settings
from server.turn import ice_servers_for, turn_credential

from tests.conftest import RunningServer, hello, resume


def test_credential_matches_coturn_rest_scheme() -> None:
    username, credential = turn_credential("s3cret", "p-1", ttl_s=600, now=1_800_000_000)
    assert username == "1800000600:p-1"
    expected = base64.b64encode(hmac.new(b"s3cret", b"1800000600:p-1", hashlib.sha1).digest()).decode()
    assert credential == expected


def test_no_turn_without_secret() -> None:
    assert ice_servers_for(Settings(turn_urls=("turn:turn.example:3478",)), "p") == []
    stun = ({"urls": "stun:stun.example:3478"},)
    assert ice_servers_for(Settings(ice_servers=stun), "p") == [{"urls": "stun:stun.example:3478"}]


@pytest.mark.parametrize(
    "settings_overrides",
    [{"turn_urls": ("turns:turn.almere.example:443?transport=tcp", "turn:turn.almere.example:3478"),
      "turn_secret": "shared-with-coturn", "turn_ttl_s": 3600}],
)
async def test_welcome_and_resume_carry_fresh_turn_credentials(server: RunningServer, connect: Any) -> None:
    c = await connect()
    token = server.token(participant_id="p-turn")
    welcome = await hello(c, token)
    await c.send({"type": "join", "room": "room-1"})
    joined = await c.expect("joined")
    [turn] = welcome["ice_servers"]
    assert turn["urls"][0].startswith("turns:")
    expiry, user = turn["username"].split(":")
    assert user == "p-turn"
    expected = base64.b64encode(hmac.new(b"shared-with-coturn", turn["username"].encode(), hashlib.sha1).digest())
    assert turn["credential"] == expected.decode()
    await c.ws.close()
    c2 = await connect()
    resumed = await resume(c2, token, welcome, joined["seq"])
    assert resumed["ice_servers"][0]["username"].endswith(":p-turn")
