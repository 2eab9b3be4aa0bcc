"""What hostile uploads cost a node's memory (issue 11, items 8 and 13).

    python -m bench.upload_memory [--quick]

1. A real node (`verzilvering serve`, embedded store) in its own process. N anonymous
   clients each POST an 8 MiB multipart body to /login at once, sending all of it as a
   hostile client would; then N more with a session cookie (a visitor who opened /login).
   The node must answer 403 / 413 without reading the bodies: its peak RSS (sampled every
   10 ms) growth is compared with the bytes sent.
2. An 8000×8000 RGB PNG (a decompression bomb of under 200 KB) through `web.photos.reencode`
   in a fresh process, with the pixel limit (refused from its header) and, as the baseline
   in the same run, without it (decoded): peak RSS growth of each and their ratio.

Ends with one JSON line. Exits 1 when it measured the wrong thing: a status other than the
expected refusal, a bomb the baseline did not decode, or one the limit did not refuse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .processes import free_port

BODY_BYTES = 8 * 1024 * 1024
_CHUNK = 256 * 1024
# A well-formed multipart body: one "photo" file part filling the 8 MiB.
_PART_HEAD = (b'--xyz\r\nContent-Disposition: form-data; name="photo"; filename="big.jpg"\r\n'
              b"Content-Type: image/jpeg\r\n\r\n")
_PART_TAIL = b"\r\n--xyz--\r\n"

_PHOTO_PROBE = r"""
import resource, struct, sys, zlib
from web.photos import PhotoError, reencode

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

side = 8000
row = b"\0" * (1 + side * 3)
packer = zlib.compressobj(9)
idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
del idat, row
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    reencode(bomb, max_pixels=int(sys.argv[1]))
    outcome = "decoded"
except PhotoError:
    outcome = "refused"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome, len(bomb), (after - before) / 1024)
"""


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


async def _hostile_post(port: int, cookie: str) -> int:
    """Sends the whole 8 MiB body (however early the answer comes) and returns the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {BODY_BYTES}\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\n{cookie}Connection: close\r\n\r\n"
    )
    status_line = asyncio.create_task(reader.readline())
    try:
        writer.write(head.encode() + _PART_HEAD)
        remaining = BODY_BYTES - len(_PART_HEAD) - len(_PART_TAIL)
        block = b"x" * _CHUNK
        while remaining > 0:
            writer.write(block[:remaining])
            await writer.drain()
            remaining -= _CHUNK
        writer.write(_PART_TAIL)
        await writer.drain()
    except (ConnectionError, OSError):
        pass  # the node closed after answering: fine, it did not want the rest
    try:
        line = await asyncio.wait_for(status_line, 15)
    finally:
        writer.close()
    parts = line.decode(errors="replace").split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


class _RssSampler(threading.Thread):
    """The node's largest resident set while the posts run, read every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))


def _session_cookie(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as response:
        cookies = [h.split(";", 1)[0] for k, h in response.headers.items() if k.lower() == "set-cookie"]
    if not cookies:
        raise RuntimeError("GET /login set no session cookie")
    return "Cookie: " + "; ".join(cookies) + "\r\n"


async def _posts(port: int, count: int, cookie: str) -> list[int]:
    return list(await asyncio.gather(*(_hostile_post(port, cookie) for _ in range(count))))


def _photo(max_pixels: int) -> tuple[str, int, float]:
    out = subprocess.run([sys.executable, "-c", _PHOTO_PROBE, str(max_pixels)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent, timeout=300)
    outcome, size, growth = out.stdout.split()
    return outcome, int(size), float(growth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 posts of each kind instead of 20")
    args = parser.parse_args()
    count = 5 if args.quick else 20
    command = "python -m bench.upload_memory" + (" --quick" if args.quick else "")
    print(f"command: {command}")
    port = free_port()
    wrong: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vz-upload-bench-") as data_dir:
        env = {**os.environ, "VERZILVERING_DATA_DIR": data_dir}
        node = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "WARNING"],
            env=env, cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or node.poll() is not None:
                        raise RuntimeError("the node did not start") from None
                    time.sleep(0.2)
            cookie = _session_cookie(port)  # also warms the page path up
            rss_before = _status_kb(node.pid, "VmRSS")
            sampler = _RssSampler(node.pid)
            sampler.start()
            anonymous = asyncio.run(_posts(port, count, ""))
            visitors = asyncio.run(_posts(port, count, cookie))
            sampler.stop()
            rss_after = _status_kb(node.pid, "VmRSS")
        finally:
            node.terminate()
            node.wait(timeout=30)
    if set(anonymous) != {403}:
        wrong.append(f"anonymous posts answered {sorted(set(anonymous))}, not 403")
    if set(visitors) != {413}:
        wrong.append(f"posts with a session answered {sorted(set(visitors))}, not 413")
    sent_mb = 2 * count * BODY_BYTES / 2**20
    growth_mb = max(0, sampler.peak_kb - rss_before) / 1024
    print(f"{count} anonymous 8 MiB POSTs to /login: statuses {sorted(set(anonymous))}; "
          f"{count} with a session: {sorted(set(visitors))}")
    print(f"node RSS {rss_before / 1024:.0f} MB before, {rss_after / 1024:.0f} MB after; peak growth "
          f"{growth_mb:.1f} MB for {sent_mb:.0f} MB sent (ratio {growth_mb / sent_mb:.3f})")

    limited, bomb_bytes, limited_mb = _photo(25_000_000)
    unlimited, _, unlimited_mb = _photo(10**12)
    if unlimited != "decoded":
        wrong.append("the baseline did not decode the 8000×8000 PNG")
    if limited != "refused":
        wrong.append("the pixel limit did not refuse the 8000×8000 PNG")
    ratio = limited_mb / unlimited_mb if unlimited_mb else float("nan")
    print(f"8000×8000 RGB PNG of {bomb_bytes / 1024:.0f} KB: with photo_max_pixels 25 MP {limited} "
          f"(+{limited_mb:.0f} MB peak); without a limit {unlimited} (+{unlimited_mb:.0f} MB peak); "
          f"ratio {ratio:.3f}")
    for problem in wrong:
        print(f"WRONG: {problem}", file=sys.stderr)
    print(json.dumps({
        "command": command,
        "hostile_posts": 2 * count,
        "hostile_post_mb_sent": round(sent_mb),
        "hostile_post_rss_growth_mb": round(growth_mb, 1),
        "photo_bomb_kb": round(bomb_bytes / 1024),
        "photo_bomb_rss_growth_mb": round(limited_mb, 1),
        "photo_bomb_unlimited_rss_growth_mb": round(unlimited_mb, 1),
        "photo_bomb_ratio": round(ratio, 3),
        "measured_right": not wrong,
    }))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
