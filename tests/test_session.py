"""The session's resume buffer: bounded by message count and by size."""

from __future__ import annotations

import json

from signaling.session import Session
from signaling.tokens import Grant, TokenIssuer

from .conftest import TEST_SECRET


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
