"""Each subscriber gets what its own line carries: one capped subscriber among five, a host with
19 thumbnails, and a link that only reorders — against today's server, in the same run.

    sudo python -m bench.adaptation [--quick] [--baseline-dir DIR]

Two servers, one after the other, each `python -m server.cli serve` in its own process:
`ours` (this checkout) and `baseline` (commit fb942a1, today's policy, unpacked with
`git archive` into a temporary directory and built there; or `--baseline-dir`). The clients
are always this checkout's kiosk `CallClient`s. Per server, three phases:

A  capped: one publisher (a host: the main picture, 640x480@30, up to 1 Mbps, the kiosk's
   L1T3 encoder) in this process; five subscribers, each its own process
   (`bench.netclient`): four on this side, one in a network namespace whose downlink is
   capped at 250 kbit/s by `tc tbf` (`bench.netns`). The four join first; what the
   publisher sends then (a reference window after a warm-up) is its top layer. Then the
   capped one joins, and over a window after a warm-up: the worst uncapped subscriber's
   received video bitrate ÷ that top layer, and its frame rate; the capped subscriber's frame rate and
   longest freeze after its first 5 s; the publisher's keyframes per 10 s (the uncapped
   subscribers ask for none once started, so these are the capped subscriber's).
B  reorder: one publisher, one subscriber whose every incoming datagram is held 30 ± 10 ms
   (`bench.jitterlink`, in user space: this kernel has no netem); no loss. Needless
   retransmissions = the server's retransmissions (`verzilvering_nack` in /metrics) ÷ the
   video packets the subscriber received. The NACKs come from the subscriber, so the
   baseline's subscriber runs with the old policy (`bench.netclient --nack-at-once`). The
   publisher leg (the SFU's own NACKs) is covered by tests/integration/test_reorder.py.
C  thumbnails: in an activity (the server's `--demo` one), 19 seniors publish 320x240@15
   tiles (as the server asks of seniors in a big activity) and a host subscribes to all, telling the server (`layout`) it shows each at
   320x180. Measured: the host's received video kbit/s in total and its CPU (decoding).

The figures are printed per server with ratios (ours ÷ baseline), then the command, the
machine and ONE JSON line. The bench exits non-zero when it measured the wrong thing: the
cap not in effect, a subscriber that decoded nothing, the jitter not applied.
Needs root (network namespace), `ip`, `tc`, `nft`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import VideoStreamTrack
from aiortc.rtp import RtpPacket
from av import VideoFrame

from bench.latency import REPO, ServerHandle
from bench.machine import describe
from bench.netns import ImpairedLink
from bench.vp8_retarget import is_keyframe, pattern_frame
from bench.waiting import until
from kiosk_client.call import CallClient
from kiosk_client.media import open_audio
from kiosk_client.vp8payloader import read_written_descriptor
from server.cli import DEMO_ROOM
from server.rtc.ice import restrict_host_addresses
from signaling.tokens import TokenIssuer

BASELINE_COMMIT = "fb942a1"
CAP_KBIT = 250
SUBSCRIBERS = 5
THUMBNAILS = 19
THUMBNAIL_SIZE = (320, 180)
MAIN_LAYOUT = "640:480"
FREEZE_AFTER_S = 5.0


@dataclass(frozen=True)
class Timing:
    window_s: float
    warmup_s: float
    reference_warmup_s: float
    reference_s: float
    reorder_s: float
    thumbnails_s: float


FULL = Timing(window_s=45, warmup_s=6, reference_warmup_s=15, reference_s=10, reorder_s=30, thumbnails_s=20)
QUICK = Timing(window_s=15, warmup_s=5, reference_warmup_s=10, reference_s=6, reorder_s=12, thumbnails_s=10)


class WrongMeasurement(RuntimeError):
    """The bench did not measure what it claims (shaping off, nothing decoded, ...)."""


# -- media sources ---------------------------------------------------------------------------


class CameraTrack(VideoStreamTrack):
    """The camera-like pattern of bench.vp8_retarget, paced at 30 fps; frames made once and cycled."""

    def __init__(self, width: int = 640, height: int = 480, distinct: int = 90) -> None:
        super().__init__()
        self._frames = [pattern_frame(i, width, height) for i in range(distinct)]

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        source = self._frames[(pts // 3000) % len(self._frames)]
        frame = VideoFrame.from_ndarray(source.to_ndarray(), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame


class TileTrack(VideoStreamTrack):
    """A 320x240 tile at 15 fps; all tiles share one set of frames (this process encodes 19)."""

    _shared: list[Any] = []

    def __init__(self) -> None:
        super().__init__()
        if not TileTrack._shared:
            TileTrack._shared = [pattern_frame(i, 320, 240).to_ndarray() for i in range(30)]

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        await self.next_timestamp()  # every other tick: 15 fps
        frame = VideoFrame.from_ndarray(TileTrack._shared[(pts // 6000) % 30], format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class SentVideo:
    """The publisher's video RTP as it leaves its sender: bytes and keyframes, timed."""

    ssrc: int
    packets: list[tuple[float, int, bool]] = field(default_factory=list)

    def add(self, data: bytes) -> None:
        if 192 <= data[1] <= 223:  # RTCP
            return
        packet = RtpPacket.parse(data)
        if packet.ssrc != self.ssrc or not packet.payload:
            return
        keyframe = False
        with contextlib.suppress(ValueError):
            descriptor, frame = read_written_descriptor(packet.payload)
            keyframe = descriptor.start and is_keyframe(frame)
        self.packets.append((time.monotonic(), 12 + len(packet.payload), keyframe))

    def kbps(self, start: float, end: float) -> float:
        return sum(size for t, size, _ in self.packets if start <= t < end) * 8 / (end - start) / 1000

    def keyframes(self, start: float, end: float) -> int:
        return sum(key for t, _, key in self.packets if start <= t < end)


def record_sent_video(client: CallClient) -> SentVideo:
    assert client.pc is not None
    sender = next(t.sender for t in client.pc.getTransceivers() if t.sender.kind == "video" and t.sender.track)
    sent = SentVideo(sender._ssrc)
    dtls = sender.transport
    send_rtp = dtls._send_rtp

    async def recording(data: bytes) -> None:
        sent.add(data)
        await send_rtp(data)

    dtls._send_rtp = recording  # type: ignore[method-assign]
    return sent


# -- subscribers (bench.netclient processes) -------------------------------------------------


@dataclass
class Subscriber:
    name: str
    proc: asyncio.subprocess.Process
    report: dict[str, Any] | None = None

    @classmethod
    async def start(cls, name: str, argv: list[str]) -> "Subscriber":
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(name, proc)

    async def finish(self, timeout: float) -> dict[str, Any]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout=timeout)
        if self.proc.returncode != 0 or not out.strip():
            raise WrongMeasurement(f"subscriber {self.name} failed: {err.decode()[-1500:]}")
        self.report = json.loads(out.decode().strip().splitlines()[-1])
        return self.report

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def netclient(server: str, token: str, duration: float, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.netclient", "--server", server, "--token", token,
            "--duration", f"{duration:.1f}", "--media-address", address, *extra]


def video_kbps(report: dict[str, Any], start: float, end: float, column: int = 1) -> float:
    """Received kbit/s in [start, end] from a report's cumulative byte samples (1: video, 2: all)."""
    samples = [s for s in report["byte_samples"] if start <= s[0] <= end]
    if len(samples) < 2:
        return 0.0
    first, last = samples[0], samples[-1]
    return (last[column] - first[column]) * 8 / (last[0] - first[0]) / 1000


def frames_in(report: dict[str, Any], participant: str, start: float, end: float) -> list[float]:
    return [t for t in report["frames"].get(participant, []) if start <= t <= end]


def max_freeze_ms(times: list[float], start: float, end: float) -> float:
    points = [start, *times, end]
    return max(b - a for a, b in zip(points, points[1:])) * 1000


# -- one server, three phases ----------------------------------------------------------------


@dataclass
class Context:
    link: ImpairedLink
    timing: Timing
    workdir: Path
    phases: tuple[Any, ...]


async def metrics(server: ServerHandle) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/metrics") as resp:
            text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("verzilvering_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = values.get(name, 0.0) + float(value)
    return values


async def phase_capped(server: ServerHandle, issuer: TokenIssuer, ctx: Context, baseline: bool) -> dict[str, Any]:
    t, link = ctx.timing, ctx.link
    room = "adapt-capped"
    publisher = CallClient(server.url, issuer.issue(role="host", room=room, name="Publisher"),
                           video=CameraTrack(), audio=open_audio("tone").audio)
    subscribers: list[Subscriber] = []
    try:
        await publisher.start()
        await until(lambda: publisher.pc is not None and publisher.pc.connectionState == "connected", 15)
        sent = record_sent_video(publisher)
        # First the four uncapped subscribers alone: what the publisher's top layer is when
        # nobody is struggling (the reference), then the capped one joins.
        spacing = 0.7
        uncapped_duration = (SUBSCRIBERS - 1) * spacing + t.reference_warmup_s + t.reference_s + t.warmup_s + t.window_s + 2
        for i in range(SUBSCRIBERS - 1):
            # Each shows the publisher full screen (the `layout` message; today's server ignores it).
            argv = netclient(server.url, issuer.issue(role="senior", room=room, name=f"Kijker {i}"),
                             uncapped_duration - i * spacing, link.host_address, "--layout", MAIN_LAYOUT)
            subscribers.append(await Subscriber.start(f"uncapped-{i}", argv))
            await asyncio.sleep(spacing)
        # aiortc's receive-side estimators ramp their REMB up over several seconds.
        reference_start = time.monotonic() + t.reference_warmup_s
        reference_end = reference_start + t.reference_s
        await asyncio.sleep(reference_end - time.monotonic())
        target_alone = publisher.publishing.governor.target
        argv = netclient(server.url, issuer.issue(role="senior", room=room, name="Kijker capped"),
                         t.warmup_s + t.window_s + 1, link.ns_address, "--layout", MAIN_LAYOUT)
        qdisc_before = link.downlink_qdisc()
        subscribers.append(await Subscriber.start("capped", link.command(argv)))
        window_start = time.monotonic() + t.warmup_s
        window_end = window_start + t.window_s
        await asyncio.sleep(window_end - time.monotonic())
        target_with_capped = publisher.publishing.governor.target
        reports = [await s.finish(timeout=uncapped_duration + 30) for s in subscribers]
        qdisc_after = link.downlink_qdisc()
    finally:
        for s in subscribers:
            await s.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.close(), timeout=10)
    pid = publisher.self_id
    top_kbps = sent.kbps(reference_start, reference_end)
    per_sub = []
    for s, report in zip(subscribers, reports):
        frames = frames_in(report, pid, window_start, window_end)
        # The capped subscriber decoding nothing is a result (today's); an uncapped one is not.
        if not frames and s.name != "capped":
            raise WrongMeasurement(f"{s.name} decoded no video in the window")
        first = report["frames"][pid][0] if report["frames"].get(pid) else window_start - FREEZE_AFTER_S
        freeze_from = max(window_start, first + FREEZE_AFTER_S)
        if freeze_from >= window_end:
            freeze_from = window_start
        per_sub.append({
            "name": s.name,
            "kbps": round(video_kbps(report, window_start, window_end), 1),
            "all_kbps": round(video_kbps(report, window_start, window_end, column=2), 1),
            "fps": round(len(frames) / t.window_s, 1),
            # From 5 s after its first frame; a subscriber whose first frame came later than
            # that before the window's end is judged on the whole window.
            "max_freeze_ms": round(max_freeze_ms(frames_in(report, pid, freeze_from, window_end), freeze_from, window_end)),
            "size": report["sizes"].get(pid),
            "keyframe_requests": report["keyframe_requests"],
            "decode_errors": report["decode_errors"],
            "decoder_dropped": report["decoder_dropped"],
            "incomplete": report["frames_dropped_incomplete"],
            "nack_requests": report["nack_requests"],
        })
    capped, uncapped = per_sub[-1], per_sub[:-1]
    if capped["all_kbps"] > CAP_KBIT * 1.2:
        raise WrongMeasurement(f"the capped subscriber received {capped['all_kbps']} kbit/s: the {CAP_KBIT} kbit/s cap is not in effect")
    if "tbf" not in qdisc_after or qdisc_after == qdisc_before:
        raise WrongMeasurement(f"the tbf qdisc saw no traffic: {qdisc_after}")
    worst = min(uncapped, key=lambda s: s["kbps"])
    return {
        "top_kbps": round(top_kbps, 1),
        "sent_kbps_with_capped": round(sent.kbps(window_start, window_end), 1),
        # The kiosk encoder's target (what the SFU's REMB asked for) at the end of each window.
        "publisher_target_kbps_alone": target_alone // 1000,
        "publisher_target_kbps_with_capped": target_with_capped // 1000,
        "reference_keyframes_per_10s": round(sent.keyframes(reference_start, reference_end) / t.reference_s * 10, 2),
        "uncapped_bitrate_ratio": round(worst["kbps"] / top_kbps, 3) if top_kbps else 0.0,
        "uncapped_fps": min(s["fps"] for s in uncapped),
        "capped_fps": capped["fps"],
        "capped_max_freeze_ms": capped["max_freeze_ms"],
        "capped_forced_keyframes_per_10s": round(sent.keyframes(window_start, window_end) / t.window_s * 10, 2),
        "subscribers": per_sub,
    }


async def phase_reorder(server: ServerHandle, issuer: TokenIssuer, ctx: Context, baseline: bool) -> dict[str, Any]:
    t = ctx.timing
    room = "adapt-reorder"
    publisher = CallClient(server.url, issuer.issue(role="host", room=room, name="Publisher"),
                           video=CameraTrack(), audio=open_audio("tone").audio)
    subscriber: Subscriber | None = None
    try:
        await publisher.start()
        token = issuer.issue(role="senior", room=room, name="Kijker")
        before = await metrics(server)
        # Today's subscriber NACKed every gap at once: the baseline's gets the old policy.
        extra = ("--nack-at-once",) if baseline else ()
        subscriber = await Subscriber.start("jittered", netclient(
            server.url, token, t.reorder_s, ctx.link.host_address, "--jitter-ms", "30", "--jitter-spread-ms", "10", *extra))
        report = await subscriber.finish(timeout=t.reorder_s + 30)
        after = await metrics(server)
    finally:
        if subscriber is not None:
            await subscriber.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.close(), timeout=10)
    if not report["jittered"]:
        raise WrongMeasurement("the jittering link was never applied to the subscriber")
    if not report["frames"].get(publisher.self_id):
        raise WrongMeasurement("the jittered subscriber decoded no video")
    retransmitted = after.get("verzilvering_nack_total", 0) - before.get("verzilvering_nack_total", 0)
    packets = report["video_packets"]
    return {
        "video_packets": packets,
        "retransmissions": int(retransmitted),
        "subscriber_nacked": report["nack_requests"],
        "subscriber_reordered": report["nack_reordered"],
        "subscriber_needless": report["nack_needless"],
        "reorder_allowance_ms": round(report["reorder_allowance_ms"], 1),
        "reorder_retransmit_pct": round(100 * retransmitted / max(1, packets), 2),
    }


async def phase_thumbnails(server: ServerHandle, issuer: TokenIssuer, ctx: Context, baseline: bool) -> dict[str, Any]:
    t = ctx.timing
    # An activity (the server's --demo one): with more than six people in it, seniors' tiles
    # go to the hosts only, as in a real class; elsewhere everyone would decode everyone.
    room = DEMO_ROOM
    publishers: list[CallClient] = []
    host: Subscriber | None = None
    try:
        for i in range(THUMBNAILS):
            publisher = CallClient(server.url, issuer.issue(role="senior", room=room, name=f"Senior {i}"),
                                   video=TileTrack())
            await publisher.start()
            publishers.append(publisher)
        warmup = 5.0
        host = await Subscriber.start("host", netclient(
            server.url, issuer.issue(role="host", room=room, name="Host"), warmup + t.thumbnails_s,
            ctx.link.host_address, "--layout", "{}:{}".format(*THUMBNAIL_SIZE)))
        window_start = time.monotonic() + warmup
        report = await host.finish(timeout=warmup + t.thumbnails_s + 30)
        window_end = report["ended"]
    finally:
        if host is not None:
            await host.kill()
        for publisher in publishers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher.close(), timeout=10)
    shown = [p.self_id for p in publishers if frames_in(report, p.self_id, window_start, window_end)]
    if len(shown) < THUMBNAILS:
        raise WrongMeasurement(f"the host decoded only {len(shown)} of {THUMBNAILS} thumbnails")
    total = video_kbps(report, window_start, window_end)
    frames = sum(len(frames_in(report, p, window_start, window_end)) for p in shown)
    return {
        "thumbnails_total_kbps": round(total, 1),
        "thumbnails_fps_mean": round(frames / THUMBNAILS / (window_end - window_start), 1),
        "thumbnails_host_cpu_pct": round(100 * report["cpu_s"] / (report["ended"] - report["started"]), 1),
        "thumbnail_sizes": sorted({tuple(size) for size in report["sizes"].values()}),
    }


PHASES = {"capped": phase_capped, "reorder": phase_reorder, "thumbnails": phase_thumbnails}


async def run_server(name: str, cwd: Path, ctx: Context) -> dict[str, Any]:
    secret = secrets.token_urlsafe(48)
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.workdir))
    server = await ServerHandle.subprocess(
        name,
        [sys.executable, "-m", "server.cli", "serve", "--host", ctx.link.host_address, "--port", "{port}",
         "--data-dir", str(data_dir), "--log-level", "WARNING", "--demo"],
        {"VERZILVERING_TOKEN_SECRET": secret,
         "VERZILVERING_MEDIA_ADDRESSES": json.dumps([ctx.link.host_address]),
         "VERZILVERING_MAX_PARTICIPANTS_PER_ROOM": "30"},
        ctx.workdir, host=ctx.link.host_address, cwd=cwd,
    )
    issuer = TokenIssuer(secret)
    try:
        result: dict[str, Any] = {}
        for phase in ctx.phases:
            print(f"  {name}: {phase.__name__} ...", flush=True)
            result.update(await phase(server, issuer, ctx, name == "baseline"))
        return result
    finally:
        await server.stop()


def baseline_checkout(workdir: Path) -> Path:
    """Today's code (BASELINE_COMMIT) unpacked next to the run and its C module built."""
    target = workdir / f"baseline-{BASELINE_COMMIT}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_COMMIT], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=target, check=True,
                   capture_output=True)
    return target


async def main_async(args: argparse.Namespace) -> int:
    timing = QUICK if args.quick else FULL
    command = "python -m bench.adaptation" + (" --quick" if args.quick else "")
    print(f"command: {command}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-adaptation-"))
    try:
        baseline = Path(args.baseline_dir) if args.baseline_dir else baseline_checkout(workdir)
        with ImpairedLink.create("adapt") as link:
            link.cap_downlink_kbit(CAP_KBIT)
            # The publishers in this process offer only the address the netns can reach.
            restrict_host_addresses([link.host_address])
            phases = tuple(PHASES[name] for name in args.phases.split(","))
            ctx = Context(link, timing, workdir, phases)
            results = {}
            for name, cwd in (("ours", REPO), ("baseline", baseline)):
                results[name] = await run_server(name, cwd, ctx)
    except WrongMeasurement as exc:
        print(f"WRONG MEASUREMENT: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours, base = results["ours"], results["baseline"]
    for name, result in results.items():
        print(f"{name}:")
        for key, value in result.items():
            if key != "subscribers":
                print(f"  {key:34} {value}")
        for s in result.get("subscribers", []):
            print(f"  {s}")
    ratio = {
        key: round(ours[key] / base[key], 3) if isinstance(base.get(key), (int, float)) and base[key] else None
        for key in ("uncapped_bitrate_ratio", "capped_fps", "thumbnails_total_kbps", "thumbnails_host_cpu_pct",
                    "reorder_retransmit_pct")
    }
    print("ours / baseline:", ratio)
    line = {
        "bench": "adaptation",
        "command": command,
        **describe(),
        "baseline_commit": BASELINE_COMMIT,
        "window_s": timing.window_s,
        "cap_kbit": CAP_KBIT,
        "uncapped_bitrate_ratio": ours.get("uncapped_bitrate_ratio"),
        "uncapped_fps": ours.get("uncapped_fps"),
        "capped_fps": ours.get("capped_fps"),
        "capped_max_freeze_ms": ours.get("capped_max_freeze_ms"),
        "capped_forced_keyframes_per_10s": ours.get("capped_forced_keyframes_per_10s"),
        "top_kbps": ours.get("top_kbps"),
        "thumbnails_total_kbps": ours.get("thumbnails_total_kbps"),
        "thumbnails_host_cpu_pct": ours.get("thumbnails_host_cpu_pct"),
        "reorder_retransmit_pct": ours.get("reorder_retransmit_pct"),
        "baseline_uncapped_bitrate_ratio": base.get("uncapped_bitrate_ratio"),
        "baseline_uncapped_fps": base.get("uncapped_fps"),
        "baseline_capped_fps": base.get("capped_fps"),
        "baseline_capped_max_freeze_ms": base.get("capped_max_freeze_ms"),
        "baseline_capped_forced_keyframes_per_10s": base.get("capped_forced_keyframes_per_10s"),
        "baseline_thumbnails_total_kbps": base.get("thumbnails_total_kbps"),
        "baseline_thumbnails_host_cpu_pct": base.get("thumbnails_host_cpu_pct"),
        "baseline_reorder_retransmit_pct": base.get("reorder_retransmit_pct"),
        "ratios": ratio,
    }
    print(json.dumps(line))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows (about 3 minutes in all)")
    parser.add_argument("--phases", default="capped,reorder,thumbnails",
                        help="a subset, for looking into one (the JSON line then lacks the others' fields)")
    parser.add_argument("--baseline-dir", default="", help=f"a checkout of {BASELINE_COMMIT} with build_ext done")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
