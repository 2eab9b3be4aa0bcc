"""Live fuzzing: thousands of malformed, mutated and hostile messages against a real server
process, on both state backends. Afterwards: no `internal` error was ever sent, the server
logged no traceback, `/healthz` answers, and fresh clients still join and get media.

Bounded: a fixed seed, a message budget and a time budget per backend.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from server.config import Settings
from server.directory import Activity, Contact, Directory, Kiosk, Senior, hash_secret
from server.invites import issue_invite, named_secret
from server.store import open_store
from signaling.protocol import CLIENT_MESSAGES
from bench.redis_server import RedisServer
from bench.server_process import SECRET, ServerProcess

MESSAGES = 20000
TIME_BUDGET_S = 20.0
ROOM = "fuzz-room"
# Closing codes a fuzzed client may see: leave, kicked/ended, replaced, denied, bad hello,
# no hello within hello_timeout_s (a client fuzzing before hello, when the fuzz runs past
# 10 s on a slow machine), too many errors, media failed, not reading, invalid UTF-8 in a
# frame, and 1006 for a close the server aborted after close_timeout_s (this busy client
# answered too late). 1011 (a handler crashed) is not among them.
EXPECTED_CLOSES = {1000, 1006, 1007, 4001, 4002, 4003, 4004, 4005, 4006, 4007, 4008, 4009}
TYPES = sorted(CLIENT_MESSAGES)


class Fuzzer:
    """Makes messages: valid shapes with hostile values, and byte-level mutations."""

    def __init__(self, seed: int, participant_ids: list[str]) -> None:
        self.rng = random.Random(seed)
        self.participant_ids = participant_ids

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        choices: list[Any] = [
            None, True, False, 0, -1, 2**63, -(2**70), 1.5, 1e308, "", "x" * self.rng.randint(1, 3000),
            "\ud800", "a\udfffb", "\u0000", "😀", "audio", "video", ROOM, "<script>alert(1)</script>",
            "' OR 1=1 --", "../../etc/passwd", "%s%n", "\r\nSet-Cookie: x=1",
            self.rng.choice(self.participant_ids),
        ]
        if r < 0.15 and depth < 4:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        if r < 0.3 and depth < 4:
            return {self.text(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}
        return self.rng.choice(choices)

    def text(self) -> str:
        return self.rng.choice(["a", "type", "id", "\ud800", "participant_id", "kind", "", "x" * 50, "sdp"])

    def shaped(self) -> dict[str, Any]:
        """A message of a real type whose fields are sometimes right and often hostile."""
        kind = self.rng.choice(TYPES)
        message: dict[str, Any] = {"type": kind}
        for name, (expected, _required) in CLIENT_MESSAGES[kind].items():
            roll = self.rng.random()
            if roll < 0.15:
                continue
            if roll < 0.5:
                message[name] = self.plausible(name, expected)
            else:
                message[name] = self.value()
        if self.rng.random() < 0.3:
            message["id"] = self.rng.choice([self.value(), "r1", "x" * 65])
        if self.rng.random() < 0.1:
            message[self.text()] = self.value()
        return message

    def plausible(self, name: str, expected: Any) -> Any:
        if name == "participant_id":
            return self.rng.choice(self.participant_ids)
        if name == "kind":
            return self.rng.choice(["audio", "video"])
        if name == "room":
            return ROOM
        if name == "activity_id":
            return "a-1"
        if name == "contact_id":
            return "c-1"
        if name == "result":
            return {"checks": {"camera": {"ok": True}, self.text(): {"ok": self.value()}}}
        if name == "v":
            return 1
        if name == "negotiation_id":
            return self.rng.randint(0, 5)
        if name == "tiles":
            return [{"participant_id": self.rng.choice(self.participant_ids), "width": 320, "height": 180},
                    {"participant_id": self.text(), "width": self.value(), "height": 9999}]
        if name == "sdp":
            return "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        types = expected if isinstance(expected, tuple) else (expected,)
        t = self.rng.choice(types)
        return {int: 1, float: 0.5, str: "x", bool: True, dict: {}, type(None): None}[t]

    def frame(self) -> str | bytes:
        roll = self.rng.random()
        if roll < 0.55:
            return json.dumps(self.shaped())
        if roll < 0.75:
            return self.mutate(json.dumps(self.shaped()))
        if roll < 0.8:
            depth = self.rng.choice([17, 999, 5000])
            return '{"type": "ping", "x": ' + "[" * depth + "]" * depth + "}"
        if roll < 0.85:
            return '{"type": "ping", "ts": ' + self.rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]) + "}"
        if roll < 0.88:
            return json.dumps({"type": "ping", "pad": "x" * (64 * 1024)})
        if roll < 0.9:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randint(0, 40)))
        return self.rng.choice(["", "null", "[]", "1", '"x"', "{", '{"type": 1}', '{"type": "x" * 100}'])

    def mutate(self, text: str) -> str:
        chars = list(text)
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.random()
            at = self.rng.randrange(len(chars) + 1)
            if op < 0.4 and chars:
                del chars[min(at, len(chars) - 1)]
            elif op < 0.8:
                # A lone surrogate only as JSON's escape: the frame itself stays UTF-8.
                chars.insert(at, self.rng.choice(list('{}[]":,\\0123456789eE+-.tfnu ') + ["\\ud800"]))
            else:
                chars = chars[:at]
        return "".join(chars)


async def seed(data_dir: Path, redis_url: str) -> dict[str, Any]:
    """A senior with a paired kiosk, a contact and an activity, written before the server
    starts (as `verzilvering admin` does); returns the kiosk's and the contact's hellos."""
    settings = Settings(data_dir=data_dir, token_secret=SECRET, redis_url=redis_url)
    store = await open_store(settings, node_id="seed")
    try:
        directory = Directory(store)
        await directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
        contact = Contact(id="c-1", senior_id="s-1", name="Sanne", trusted=True)
        await directory.put(contact, actor="test")
        await directory.put(Activity(id="a-1", title="Stoelgym", enrolled=["s-1"]), actor="test")
        credential = secrets.token_urlsafe(32)
        await directory.put(Kiosk(id="k-1", senior_id="s-1", credential_hash=hash_secret(credential)), actor="test")
    finally:
        await store.close()
    return {
        "device": {"type": "hello", "v": 1, "device": {"kiosk_id": "k-1", "credential": credential}},
        "contact": {"type": "hello", "v": 1, "contact": {"invite": issue_invite(named_secret(settings, "invite"), contact)}},
    }


class FuzzClient:
    """One socket that sends fuzz and records what comes back; reconnects when closed."""

    def __init__(self, http: aiohttp.ClientSession, server: ServerProcess, hello: dict[str, Any] | None) -> None:
        self.http = http
        self.server = server
        self.hello = hello
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.internal: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.received = 0
        self.types: set[str] = set()

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.server.ws_url)
        self.reader = asyncio.ensure_future(self._read(self.ws))
        if self.hello is not None:
            await self.ws.send_str(json.dumps(self.hello))
            if "token" in self.hello:
                await self.ws.send_str(json.dumps({"type": "join", "room": ROOM}))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.received += 1
                message = json.loads(msg.data)
                self.types.add(message.get("type", ""))
                if message.get("type") == "error" and message.get("code") == "internal":
                    self.internal.append(message)
        self.closes.append(ws.close_code)

    async def send(self, frame: str | bytes) -> None:
        if self.ws is None or self.ws.closed:
            await self.connect()
        assert self.ws is not None
        try:
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)


@pytest.fixture(params=["embedded", "redis"])
def live_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    redis = RedisServer().start() if request.param == "redis" else None
    # Limits out of the way: the fuzz is to reach the handlers, not the rate limiters.
    limits = {
        "messages_per_second": 100_000, "message_burst": 100_000,
        "error_replies_per_s": 100_000, "error_reply_burst": 100_000,
    }
    redis_url = redis.url if redis else ""
    try:
        hellos = asyncio.run(seed(tmp_path / "data", redis_url))
        with ServerProcess(tmp_path, redis_url=redis_url, **limits) as server:
            yield server, hellos
    finally:
        if redis is not None:
            redis.stop()


async def test_live_fuzz_leaves_the_server_healthy(live_server: tuple[ServerProcess, dict[str, Any]]) -> None:
    server, hellos = live_server
    people = [("host", "p-host"), ("senior", "p-a"), ("senior", "p-b"), ("family", "p-c")]
    fuzzer = Fuzzer(seed=11, participant_ids=[pid for _, pid in people] + ["p-nobody", "k-1", "c-1", "a-1"])
    async with aiohttp.ClientSession() as http:
        clients = [
            FuzzClient(http, server, {"type": "hello", "v": 1, "token": server.token(role=role, room=ROOM, name=pid, participant_id=pid)})
            for role, pid in people
        ] + [FuzzClient(http, server, hellos["device"]), FuzzClient(http, server, hellos["contact"])]
        clients += [FuzzClient(http, server, None) for _ in range(2)]
        for client in clients:
            await client.connect()
        sent = 0
        deadline = time.monotonic() + TIME_BUDGET_S
        while sent < MESSAGES and time.monotonic() < deadline:
            batch = [client.send(fuzzer.frame()) for client in clients]
            await asyncio.gather(*batch)
            sent += len(batch)
        await asyncio.sleep(1.0)
        for client in clients:
            await client.close()
        async with http.get(server.url + "/healthz") as reply:
            assert reply.status == 200
            health = await reply.json()
    assert sent >= 1000, sent
    # Every kind of channel was open to the fuzz: room members, a kiosk, a family page.
    assert "joined" in clients[0].types and "device_welcome" in clients[4].types, (clients[0].types, clients[4].types)
    assert "contact_welcome" in clients[5].types, clients[5].types
    internal = [m for c in clients for m in c.internal]
    assert internal == [], internal[:5]
    closes = {code for c in clients for code in c.closes}
    assert closes <= EXPECTED_CLOSES | {None}, closes
    assert health["status"] == "ok"

    # A fresh call still works: join and get media both ways.
    video = open_video("testsrc", width=160, height=120, fps=15).video
    audio = open_audio("tone").audio
    publisher = CallClient(server.url, server.token(role="host", room="after-fuzz", name="Host"), video=video, audio=audio)
    subscriber = CallClient(server.url, server.token(role="senior", room="after-fuzz", name="Senior"), video=None, audio=None)
    try:
        await publisher.start()
        await subscriber.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            media = subscriber.remote.get(publisher.self_id or "")
            if media is not None and media.video_frames >= 5 and media.audio_frames >= 5:
                break
            await asyncio.sleep(0.1)
        media = subscriber.remote.get(publisher.self_id or "")
        assert media is not None and media.video_frames >= 5 and media.audio_frames >= 5
    finally:
        await subscriber.close()
        await publisher.close()
    log = server.log_text()
    for sign in ("Traceback", "Task exception was never retrieved", "Exception in callback", "internal error"):
        assert sign not in log, log[log.find(sign) - 2000 : log.find(sign) + 2000]
    print(
        f"live fuzz: {sent} frames, {sum(c.received for c in clients)} replies, closes {sorted(closes, key=str)};"
        f" afterwards {media.video_frames} video and {media.audio_frames} audio frames received"
    )
