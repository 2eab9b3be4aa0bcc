"""server/_srtpsend.c, fed directly: what it protects decrypts with the peer's session,
what it sends arrives, and bad input is refused without touching the socket."""

from __future__ import annotations

import errno
import os
import socket

import pylibsrtp
import pytest
from pylibsrtp import Policy, Session
from pylibsrtp._binding import ffi, lib

from server import _srtpsend

PROTECT = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
HEADER = bytes.fromhex("80600001000000640000abcd")  # V=2, PT 96, seq 1, ts 100, SSRC 0xabcd


def _sessions() -> tuple[Session, Session, int]:
    key = os.urandom(28)
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
    return tx, rx, int(ffi.cast("uintptr_t", tx._srtp[0]))


def test_protect_gives_what_the_peer_session_decrypts() -> None:
    tx, rx, session = _sessions()
    payload = bytes(range(200))
    protected = _srtpsend.protect(PROTECT, session, HEADER, payload)
    assert protected[:12] == HEADER  # SRTP leaves the header in the clear
    assert payload not in protected
    assert rx.unprotect(protected) == HEADER + payload


def test_protect_sendto_delivers_to_the_packed_address() -> None:
    tx, rx, session = _sessions()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as into:
        into.bind(("127.0.0.1", 0))
        into.settimeout(5)
        out.setblocking(False)
        address = _srtpsend.pack_address(*into.getsockname())
        for seq in range(1, 4):
            header = HEADER[:2] + seq.to_bytes(2, "big") + HEADER[4:]
            sent = _srtpsend.protect_sendto(PROTECT, session, header, b"x" * seq * 100, out.fileno(), address)
            data, _ = into.recvfrom(2048)
            assert sent == len(data)
            assert rx.unprotect(data) == header + b"x" * seq * 100


def test_a_socket_that_refuses_gives_minus_errno() -> None:
    tx, rx, session = _sessions()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        # An IPv6 address on an IPv4 socket: the kernel refuses, nothing raises.
        sent = _srtpsend.protect_sendto(PROTECT, session, HEADER, b"x", out.fileno(), _srtpsend.pack_address("::1", 9))
        assert -sent in (errno.EAFNOSUPPORT, errno.EINVAL)


def test_too_long_a_packet_is_refused_before_protecting() -> None:
    tx, rx, session = _sessions()
    assert _srtpsend.MAX_PLAIN_BYTES == 1500 - pylibsrtp.SRTP_MAX_TRAILER_LEN
    with pytest.raises(ValueError, match="too long"):
        _srtpsend.protect(PROTECT, session, HEADER, b"x" * (_srtpsend.MAX_PLAIN_BYTES - len(HEADER) + 1))
    # Nothing was protected: the next packet still decrypts (no rollover or replay state moved).
    assert rx.unprotect(_srtpsend.protect(PROTECT, session, HEADER, b"ok")) == HEADER + b"ok"
    # The largest allowed packet goes through.
    longest = b"y" * (_srtpsend.MAX_PLAIN_BYTES - len(HEADER))
    header = HEADER[:2] + (2).to_bytes(2, "big") + HEADER[4:]
    assert rx.unprotect(_srtpsend.protect(PROTECT, session, header, longest)) == header + longest


def test_libsrtp_errors_raise_pylibsrtp_error() -> None:
    tx, rx, session = _sessions()
    # Too short to be RTP: libsrtp refuses it with a status, which becomes pylibsrtp.Error.
    with pytest.raises(pylibsrtp.Error):
        _srtpsend.protect(PROTECT, session, b"\x80", b"")


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="null pointer"):
        _srtpsend.protect(PROTECT, 0, HEADER, b"")
    with pytest.raises(TypeError):
        _srtpsend.protect(PROTECT, 1, "not bytes", b"")
    with pytest.raises(TypeError, match="4 arguments"):
        _srtpsend.protect(PROTECT, 1, HEADER)
    with pytest.raises(ValueError, match="not a numeric address"):
        _srtpsend.pack_address("example.org", 443)
