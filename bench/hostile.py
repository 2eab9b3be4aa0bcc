"""Hostile clients on raw sockets, as an attacker would write them (bench/abuse.py, tests).

No library client: these peers break the rules a library keeps (never reading, never
finishing a request, sending frames faster than anyone answers).
"""

from __future__ import annotations

import base64
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field

# Masked client frames; a zero mask key leaves the payload as it is.
ONE_BYTE_TEXT_FRAME = b"\x81\x81\x00\x00\x00\x00x"
# The largest control frame: the server answers each with a pong of the same size.
PING_FRAME = b"\x89\xfd\x00\x00\x00\x00" + b"p" * 125


def websocket_handshake(port: int, path: str = "/ws", host: str = "127.0.0.1") -> socket.socket:
    """Opens a WebSocket at the raw socket level; returns the socket after the 101."""
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {reply!r}")
        reply += chunk
    status = reply.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        raise ConnectionError(f"no WebSocket: {status!r}")
    return sock


@dataclass
class Flooder:
    """Sends `frame` (1-byte text frames) as fast as the socket takes them and never reads.

    `gone_after` is the seconds from the start until the server dropped the socket
    (a send failed), None while it is open.
    """

    sock: socket.socket
    frame: bytes = ONE_BYTE_TEXT_FRAME
    started: float = 0.0
    gone_after: float | None = None
    frames_sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sock.close()

    def _run(self) -> None:
        batch = self.frame * max(1, 16384 // len(self.frame))
        view = memoryview(batch)
        offset = 0
        sent_bytes = 0
        self.sock.setblocking(False)
        while not self._stop.is_set():
            _, writable, broken = select.select([], [self.sock], [self.sock], 0.1)
            if not writable and not broken:
                continue
            try:
                n = self.sock.send(view[offset:])
            except BlockingIOError:
                continue
            except OSError:
                self.gone_after = time.monotonic() - self.started
                break
            sent_bytes += n
            # The batch is whole frames, sent as an endless cycle: frames stay aligned.
            offset = (offset + n) % len(batch)
        self.frames_sent = sent_bytes // len(self.frame)


def peer_closed(sock: socket.socket) -> bool:
    """True once the server has closed or reset this socket (reads nothing but the end)."""
    try:
        sock.setblocking(False)
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def text_frame(payload: bytes) -> bytes:
    """A masked client text frame (zero mask key)."""
    if len(payload) < 126:
        header = bytes([0x81, 0x80 | len(payload)])
    elif len(payload) < 65536:
        header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


def open_idle(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket | None:
    """A TCP connection that never sends a byte; None when the server does not take it."""
    try:
        return socket.create_connection((host, port), timeout=5, source_address=(source, 0) if source else None)
    except OSError:
        return None
