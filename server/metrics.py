"""`/metrics` in Prometheus format.

The media hot path keeps plain integer counters on its objects (a Prometheus counter per
packet would cost a lock each time); this collector sums them when Prometheus scrapes,
plus what closed producers and consumers left behind. Labels never name a person or room.
"""

from __future__ import annotations

import gc
import hmac
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .appkeys import METRICS_KEY, SETTINGS_KEY
from .sfu.totals import MediaTotals
from .tasks import task_failures, tasks_stuck

if TYPE_CHECKING:
    from signaling.service import SignalingService

    from .sfu.router import Sfu


# Bands of the subscribers' downlink estimates in /metrics (bits per second).
ESTIMATE_BANDS = (250_000, 500_000, 1_000_000, 2_000_000, 5_000_000)
SPATIAL_NAMES = {0: "l", 1: "m", 2: "h"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.join_seconds = Histogram(
            "verzilvering_join_seconds",
            "From hello to the room snapshot, on the node hosting the room.",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.connections_dropped = Counter(
            "verzilvering_connections_dropped",
            "Connections that had not signed in, dropped by server/connections.py: refused (a cap),"
            " evicted (oldest idle, for a newcomer), timed_out (slow headers or body), accept_failed"
            " (open-files limit reached).",
            ["reason"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "verzilvering_redis_errors", "State-store operations that failed (store unreachable or refusing).",
            registry=self.registry,
        )

        # Media and signalling share one event loop, so a long collection freezes every
        # call on the node for its duration: the operator should see it.
        self.gc_pause_seconds = Histogram(
            "verzilvering_gc_pause_seconds",
            "Garbage-collector pauses of this node's process, by generation.",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self._gc_started = 0.0
        self.registry.register(_TaskFailureCollector())

    def watch(self, sfu: "Sfu", signaling: "SignalingService") -> None:
        self.registry.register(_LiveCollector(sfu, signaling))
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause_seconds.labels(str(info["generation"])).observe(time.perf_counter() - self._gc_started)


class _TaskFailureCollector(Collector):
    """server/tasks.py's counters, kept there so that every layer can count without
    importing this module."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "verzilvering_task_failures",
            "Background tasks that ended with an exception (logged with their name), by task.",
            labels=["task"],
        )
        for name, count in sorted(task_failures.items()):
            family.add_metric([name], count)
        yield family
        stuck = CounterMetricFamily(
            "verzilvering_tasks_stuck",
            "Background tasks still running long after their owner cancelled them on close"
            " (logged with where they wait), by task.",
            labels=["task"],
        )
        for name, count in sorted(tasks_stuck.items()):
            stuck.add_metric([name], count)
        yield stuck


class _LiveCollector(Collector):
    def __init__(self, sfu: "Sfu", signaling: "SignalingService") -> None:
        self.sfu = sfu
        self.signaling = signaling

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        totals = MediaTotals()
        totals.update(self.sfu.totals)
        consumers = 0
        # Layered video consumers by the layer they forward now (no per-person labels), and
        # subscribers by their link estimate's band.
        by_layer: dict[tuple[str, str], int] = {}
        estimates = {band: 0 for band in ESTIMATE_BANDS}
        estimated = 0
        estimate_sum = 0.0
        keyframes_held_back = 0
        for router in self.sfu.routers.values():
            for transport in router.transports.values():
                totals.update(transport.totals())
                if transport.estimate.available_bps is not None:
                    estimated += 1
                    estimate_sum += transport.estimate.available_bps
                    band = next((b for b in ESTIMATE_BANDS if transport.estimate.available_bps <= b), None)
                    if band is not None:
                        estimates[band] += 1
                for slot in transport.consumer_slots.values():
                    consumers += 1
                    keyframes_held_back += slot.consumer.keyframe_requests_dropped
                    if slot.consumer.producer.layered:
                        spatial = slot.consumer.current_spatial
                        key = (
                            "none" if spatial is None else SPATIAL_NAMES.get(spatial, str(spatial)),
                            # A stream's own temporal layers only (a target may aim above them).
                            str(min(slot.consumer.current_temporal, slot.consumer.producer.layers.temporal_layers - 1)),
                        )
                        by_layer[key] = by_layer.get(key, 0) + 1
        yield GaugeMetricFamily("verzilvering_rooms", "Rooms whose media this node hosts.", len(self.sfu.routers))
        yield GaugeMetricFamily(
            "verzilvering_participants", "Participant sessions on this node.",
            sum(1 for s in self.signaling.sessions.values() if s.joined),
        )
        yield GaugeMetricFamily("verzilvering_forwarded_streams", "Consumers: one track forwarded to one subscriber.", consumers)
        yield CounterMetricFamily("verzilvering_received_packets", "RTP packets received from publishers.", totals["packets_in"])
        yield CounterMetricFamily("verzilvering_forwarded_packets", "RTP packets forwarded to subscribers.", totals["packets_out"])
        yield CounterMetricFamily("verzilvering_forwarded_bytes", "RTP payload bytes forwarded to subscribers.", totals["bytes_out"])
        yield CounterMetricFamily("verzilvering_packets_lost", "Packets lost on the way from publishers.", totals["packets_lost"])
        yield CounterMetricFamily("verzilvering_nack", "Packets retransmitted after a subscriber's NACK.", totals["retransmits"])
        yield CounterMetricFamily(
            "verzilvering_nack_refused",
            "Subscribers' NACKs left unanswered: their link was congested and its share for repairs spent.",
            totals["retransmits_refused"],
        )
        yield CounterMetricFamily(
            "verzilvering_nack_skipped",
            "Subscribers' NACKs not answered because the packet was resent less than a round trip ago or is too old to help.",
            totals["retransmits_skipped"],
        )
        yield CounterMetricFamily(
            "verzilvering_probe_packets",
            "Padding packets sent to probe a subscriber's link before a higher layer is forwarded.",
            totals["probe_packets"],
        )
        yield CounterMetricFamily(
            "verzilvering_send_refused", "Forwarded packets this node's own socket refused (send buffer full).", totals["send_refused"]
        )
        yield CounterMetricFamily("verzilvering_pli", "Keyframe requests (PLI) sent to publishers.", totals["keyframe_requests"])
        layers = GaugeMetricFamily(
            "verzilvering_consumer_layer",
            "Layered video consumers by the simulcast layer (l, m, h; none while waiting) and temporal layer they forward.",
            labels=["spatial", "temporal"],
        )
        for (spatial, temporal), count in sorted(by_layer.items()):
            layers.add_metric([spatial, temporal], count)
        yield layers
        bands = GaugeMetricFamily(
            "verzilvering_subscriber_estimate_bps_le",
            "Subscribers whose downlink estimate is at most `le` bits per second (cumulative bands).",
            labels=["le"],
        )
        running = 0
        for band in ESTIMATE_BANDS:
            running += estimates[band]
            bands.add_metric([str(band)], running)
        bands.add_metric(["+Inf"], estimated)
        yield bands
        yield GaugeMetricFamily(
            "verzilvering_subscriber_estimate_bps_sum", "Sum of the subscribers' downlink estimates.", estimate_sum
        )
        yield GaugeMetricFamily(
            "verzilvering_subscriber_keyframe_requests_held_back",
            "Keyframe requests of current subscribers not passed to the publisher (per-subscriber budget).",
            keyframes_held_back,
        )


async def metrics_endpoint(request: web.Request) -> web.Response:
    token = request.app[SETTINGS_KEY].metrics_token
    if token and not _bearer_matches(request.headers.get("Authorization", ""), token):
        return web.Response(
            status=401, text="A bearer token is needed for /metrics.\n",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
