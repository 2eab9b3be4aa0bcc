"""The session's resume buffer and a connection's outbound buffer and close: all bounded."""

from __future__ import annotations

import asyncio
import json

from signaling.session import Connection, ConnectionLimits, RateLimiter, Session
from signaling.tokens import Grant, TokenIssuer

from tests.conftest import TEST_SECRET


def _grant() -> Grant:
    issuer = TokenIssuer(TEST_SECRET)
    return issuer.verify(issuer.issue(role="senior", room="room-1", name="A", participant_id="p-a"))


def test_resume_buffer_capped_by_bytes() -> None:
    session = Session(_grant(), buffer_size=256, buffer_bytes=1000)
    for i in range(40):
        session.send({"type": "chat", "pad": "x" * 100, "i": i})
    count, size = session.buffered
    assert size <= 1000
    # Each message is ~130 characters: about 7 fit, far fewer than the 256 allowed by count.
    assert 5 <= count <= 8
    assert session.replay_after(1) is None  # dropped by the byte cap
    newest = session.replay_after(session.seq - count)
    assert newest is not None and len(newest) == count
    assert [json.loads(t)["i"] for t in newest] == list(range(40 - count, 40))
    assert sum(len(t) for t in newest) == size


def test_resume_buffer_keeps_newest_message_even_over_the_cap() -> None:
    session = Session(_grant(), buffer_size=256, buffer_bytes=100)
    session.send({"type": "offer", "sdp": "v=0" * 200})
    assert session.buffered[0] == 1
    assert session.replay_after(0) is not None
    session.send({"type": "offer", "sdp": "v=1" * 200})
    assert session.buffered[0] == 1
    assert session.replay_after(0) is None and session.replay_after(1) is not None


def test_resume_buffer_capped_by_count_keeps_byte_total() -> None:
    session = Session(_grant(), buffer_size=3, buffer_bytes=10**6)
    texts = []
    for i in range(10):
        session.send({"type": "x", "i": i})
        texts.append(json.dumps({"type": "x", "i": i, "seq": i + 1}))
    assert session.buffered == (3, sum(len(t) for t in texts[-3:]))


class _StuckConnection(Connection):
    """A channel whose peer never reads: every send and every close handshake hangs."""

    __slots__ = ("aborted", "shut")

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__(RateLimiter(20.0, 40), limits)
        self.aborted = False
        self.shut = False

    @property
    def closed(self) -> bool:
        return self.aborted or self.shut

    async def _deliver(self, text: str) -> None:
        await asyncio.Event().wait()

    async def _shut(self, code: int, reason: str) -> None:
        await asyncio.Event().wait()

    def _abort(self) -> None:
        self.aborted = True


LIMITS = ConnectionLimits(max_outbound_bytes=1000, close_timeout_s=0.2, error_replies_per_s=1.0, error_reply_burst=3)


async def test_outbound_over_the_bound_drops_the_connection() -> None:
    conn = _StuckConnection(LIMITS)
    for _ in range(9):
        conn.send_text("x" * 100)
    await asyncio.sleep(0)
    assert not conn.aborted
    conn.send_text("x" * 101)
    assert conn.aborted and conn.closing
    # Nothing more is kept for it.
    conn.send_text("y" * 10_000)
    assert conn._pending_bytes == 0 and not conn._pending


async def test_close_completes_within_the_timeout_whatever_the_peer_does() -> None:
    conn = _StuckConnection(LIMITS)
    conn.send_text("queued")
    started = asyncio.get_running_loop().time()
    await conn.close(4002, "no hello")
    assert asyncio.get_running_loop().time() - started < 0.5
    assert conn.aborted


async def test_close_soon_starts_one_close() -> None:
    conn = _StuckConnection(LIMITS)
    conn.close_soon(4009, "too many errors")
    first = conn._closer
    conn.close_soon(4009, "too many errors")
    assert conn._closer is first and conn.closing
    await asyncio.sleep(0.3)
    assert conn.aborted
