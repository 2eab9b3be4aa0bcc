"""A participant's signalling session, which outlives any one WebSocket (resume)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from server.config import Settings
from server.store import StoreUnavailable
from server.tasks import TaskOwner

from .protocol import CloseCode
from .tokens import Grant

if TYPE_CHECKING:
    from server.sfu.transport import WebRtcTransport

logger = logging.getLogger(__name__)


class RateLimiter:
    """Token bucket: `rate` messages per second with bursts up to `burst`."""

    __slots__ = ("_rate", "_burst", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost the node, whatever its peer does (server/config.py)."""

    # Text waiting to be sent; a peer that stops reading is dropped beyond it.
    max_outbound_bytes: int
    # A close (flush, close handshake) takes at most this long; then the transport is aborted.
    close_timeout_s: float
    # Error replies: a client that keeps earning them is closed, not answered forever.
    error_replies_per_s: float
    error_reply_burst: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConnectionLimits":
        return cls(
            max_outbound_bytes=settings.max_outbound_bytes,
            close_timeout_s=settings.close_timeout_s,
            error_replies_per_s=settings.error_replies_per_s,
            error_reply_burst=settings.error_reply_burst,
        )


class Connection:
    """One client's signalling channel. Messages leave in the order sent.

    A writer task runs only while there is something to send: an idle kiosk holds no task
    and no queue (with 10,000 connections, a task and an asyncio.Queue each were a good
    part of the memory per connection).

    Its tasks (the writer, a close started by close_soon) belong to `tasks` and end by
    themselves: the writer once the queue is empty, a close within close_timeout_s.
    Whoever drops the connection for good may `await conn.tasks.close()` to end them now.
    """

    __slots__ = (
        "id", "limiter", "errors", "limits", "session", "device", "relay_to", "last_seen", "closing",
        "_pending", "_pending_bytes", "_writer", "_closer", "_stopped", "tasks", "__weakref__",
    )

    def __init__(self, limiter: RateLimiter, limits: ConnectionLimits) -> None:
        self.id = uuid.uuid4().hex
        self.limiter = limiter
        self.limits = limits
        self.errors = RateLimiter(limits.error_replies_per_s, limits.error_reply_burst)
        self.session: Session | None = None
        # The kiosk id when this connection is a kiosk's device channel.
        self.device: str | None = None
        # The node this connection's frames are relayed to, when another node owns its room.
        self.relay_to: str | None = None
        self.last_seen = time.monotonic()
        # Set once the server has started closing it: what it sends from then on is ignored.
        self.closing = False
        # Texts to send; None marks the end (close or abandon): nothing after it is sent.
        self._pending: deque[str | None] = deque()
        self._pending_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._stopped = False
        self.tasks = TaskOwner("connection")

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    @property
    def signed_in(self) -> bool:
        """A hello was accepted: a session, a kiosk or family page, or relayed to the owner."""
        return self.session is not None or self.device is not None or self.relay_to is not None

    def send_text(self, text: str) -> None:
        self._push(text)

    def send(self, message: dict[str, Any]) -> None:
        self.send_text(json.dumps(message))

    def _push(self, item: str | None) -> asyncio.Task[None] | None:
        if self._stopped:
            return self._writer
        self._pending.append(item)
        if item is not None:
            self._pending_bytes += len(item)
            if self._pending_bytes > self.limits.max_outbound_bytes:
                self._overflow()
                return self._writer
        if self._writer is None or self._writer.done():
            self._writer = self.tasks.spawn(self._write(), name="connection-writer")
        return self._writer

    def _overflow(self) -> None:
        # The peer does not read what it is sent (or reads far too slowly): keeping more
        # would let it pin the node's memory. A close handshake would wait on the same
        # unread buffer, so the channel is dropped at once.
        logger.info("dropping connection %s: %d bytes waiting to be sent", self.id, self._pending_bytes)
        self._stopped = True
        self.closing = True
        self._pending.clear()
        self._pending_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self._abort()

    async def _write(self) -> None:
        pending = self._pending
        while pending:
            text = pending.popleft()
            if text is None:
                self._stopped = True
                pending.clear()
                self._pending_bytes = 0
                return
            if not self.closed:
                try:
                    await self._deliver(text)
                except (ConnectionError, RuntimeError, StoreUnavailable):
                    # The reader notices the dead channel (or, relayed, the store comes back);
                    # the session buffer keeps the message for a resume.
                    pass
            # Counted until delivered: the text in flight is held too.
            self._pending_bytes -= len(text)

    async def _deliver(self, text: str) -> None:
        raise NotImplementedError

    async def _shut(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        """Drops the channel now, without a close handshake."""
        raise NotImplementedError

    async def close(self, code: int, reason: str = "") -> None:
        """Flushes what is queued, then closes the channel; after `close_timeout_s`,
        whatever the peer does (not reading, never answering the close), it is aborted."""
        self.closing = True
        writer = self._push(None)
        try:
            await asyncio.wait_for(self._flush_and_shut(writer, code, reason), self.limits.close_timeout_s)
        except asyncio.TimeoutError:
            if writer is not None:
                writer.cancel()
            self._abort()

    async def _flush_and_shut(self, writer: asyncio.Task[None] | None, code: int, reason: str) -> None:
        if writer is not None and not writer.done():
            await asyncio.shield(writer)
        if not self.closed:
            await self._shut(code, reason)

    def close_soon(self, code: int, reason: str) -> None:
        """Starts closing without waiting for it (the close is bounded by close_timeout_s)."""
        if self._closer is None:
            self.closing = True
            self._closer = self.tasks.spawn(self._close_quietly(self.close(code, reason)), name="connection-close")

    async def _close_quietly(self, closing: Awaitable[None]) -> None:
        # A relayed close fails while the store is down; it has nothing left to undo, so
        # that is logged here, not counted as a failed task.
        try:
            await closing
        except StoreUnavailable as exc:
            logger.warning("closing connection %s failed: %r", self.id, exc)

    def abandon(self) -> None:
        self._push(None)


class WebSocketConnection(Connection):
    __slots__ = ("ws", "transport")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        limiter: RateLimiter,
        limits: ConnectionLimits,
    ) -> None:
        self.ws = ws
        self.transport = transport
        super().__init__(limiter, limits)

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def _deliver(self, text: str) -> None:
        await self.ws.send_str(text)

    async def _shut(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    def _abort(self) -> None:
        # The reader loop sees the connection lost and ends the handler as for any drop.
        # Nothing left to write (the close frame went out; the peer is just slow to answer
        # it): an orderly close, so the peer still reads our close code. An abort (RST)
        # can make its kernel discard what it has not read yet, close frame included.
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size() == 0:
            self.transport.close()
        else:
            self.transport.abort()


RelaySend = Callable[[dict[str, Any]], Awaitable[None]]


class RelayedConnection(Connection):
    """A client whose WebSocket lives on another node (the edge); frames cross via the store."""

    __slots__ = ("origin", "_relay", "_closed")

    def __init__(
        self, conn_id: str, origin: str, relay: RelaySend, limiter: RateLimiter, limits: ConnectionLimits
    ) -> None:
        self.origin = origin
        self._relay = relay
        self._closed = False
        super().__init__(limiter, limits)
        self.id = conn_id

    @property
    def closed(self) -> bool:
        return self._closed

    async def _deliver(self, text: str) -> None:
        await self._relay({"type": "_out", "conn": self.id, "text": text})

    async def _shut(self, code: int, reason: str) -> None:
        self._closed = True
        await self._relay({"type": "_close", "conn": self.id, "code": code, "reason": reason})

    def _abort(self) -> None:
        # The edge holds the socket; it is told to drop it (its own close is bounded too).
        if not self._closed:
            self._closed = True
            self._closer = self.tasks.spawn(
                self._close_quietly(self._shut(CloseCode.NOT_READING, "not reading")), name="connection-close"
            )

    def mark_gone(self) -> None:
        self._closed = True


class Session:
    __slots__ = (
        "id", "resume_key", "grant", "room", "connection", "transport", "grace_task", "ended",
        "admitted", "joined_at", "started", "seq", "presence_touched", "early", "_buffer", "_buffer_bytes",
        "_buffer_max_bytes",
    )

    def __init__(self, grant: Grant, buffer_size: int, buffer_bytes: int) -> None:
        self.id = f"s-{uuid.uuid4().hex}"
        self.resume_key = secrets.token_urlsafe(24)
        self.grant = grant
        self.room: str | None = None
        self.connection: Connection | None = None
        self.transport: WebRtcTransport | None = None
        self.grace_task: asyncio.Task[None] | None = None
        self.ended = False
        # False while waiting in the lobby.
        self.admitted = False
        self.joined_at = 0.0
        self.started = time.monotonic()
        self.seq = 0
        # When this session's presence key was last written (monotonic), 0 for never.
        self.presence_touched = 0.0
        # While joining: room events that arrive before `joined` is sent, sent after it
        # (the snapshot is read in the same store step that adds the participant).
        self.early: list[dict[str, Any]] | None = None
        # Sent messages kept for a resume, bounded by count and by total characters (the
        # messages are ASCII JSON, so characters are bytes): a long-lived kiosk must not
        # grow without bound.
        self._buffer: deque[tuple[int, str]] = deque(maxlen=buffer_size)
        self._buffer_bytes = 0
        self._buffer_max_bytes = buffer_bytes

    @property
    def participant_id(self) -> str:
        return self.grant.participant_id

    @property
    def joined(self) -> bool:
        return self.room is not None

    def send(self, message: dict[str, Any]) -> None:
        """Sends a sequenced message now, or keeps it for replay after a resume."""
        self.seq += 1
        message["seq"] = self.seq
        text = json.dumps(message)
        self._keep(self.seq, text)
        if self.connection is not None:
            self.connection.send_text(text)

    def _keep(self, seq: int, text: str) -> None:
        buffer = self._buffer
        if buffer.maxlen == 0:
            return
        if len(buffer) == buffer.maxlen:
            self._buffer_bytes -= len(buffer[0][1])
        buffer.append((seq, text))
        self._buffer_bytes += len(text)
        # The newest message always stays, even alone over the byte cap.
        while self._buffer_bytes > self._buffer_max_bytes and len(buffer) > 1:
            self._buffer_bytes -= len(buffer.popleft()[1])

    @property
    def buffered(self) -> tuple[int, int]:
        """(messages, characters) kept for a resume."""
        return len(self._buffer), self._buffer_bytes

    def check_resume_key(self, key: str) -> bool:
        return hmac.compare_digest(self.resume_key.encode(), key.encode())

    def replay_after(self, last_seq: int) -> list[str] | None:
        """Messages after `last_seq`, or None when some of them are no longer kept."""
        if last_seq > self.seq or last_seq < 0:
            return None
        if last_seq == self.seq:
            return []
        if not self._buffer or self._buffer[0][0] > last_seq + 1:
            return None
        return [text for seq, text in self._buffer if seq > last_seq]
