"""Settings for one Verzilvering node.

Every limit the service enforces lives here under a name, with a default that suits
a municipal deployment. Values come from keyword arguments (tests, CLI flags) or
from `VERZILVERING_<NAME>` environment variables.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./verzilvering-data")
    # Public base URL used in printed links; derived from host/port when empty.
    public_url: str = ""
    # HS256 signing secret for join tokens; generated into data_dir when empty.
    token_secret: str = ""
    default_token_ttl_s: int = 3600

    # Several nodes: state in Redis when set (redis://, rediss://, unix://).
    redis_url: str = ""
    # Redis connections per node (commands wait for a free one rather than failing), and
    # how long a command waits for one before the caller gets "unavailable".
    redis_max_connections: int = 100
    redis_pool_timeout_s: float = 2.0
    # Every key and channel starts with this, so several deployments can share a Redis.
    redis_prefix: str = "vz:"
    # This node's name in the cluster; a random one when empty.
    node_id: str = ""
    node_heartbeat_s: float = 1.0
    # A node silent this long is dead: its rooms move and its participants are removed.
    node_timeout_s: float = 5.0
    # Room placement: nodes whose load (sessions + forwarded streams) differs by less than
    # this count as equally loaded, and a hash of the room picks among them.
    placement_load_bucket: int = 50
    # On SIGTERM, how long to wait for clients to move elsewhere before exiting.
    drain_timeout_s: float = 30.0

    # TURN (coturn's REST-API shared-secret scheme); clients get time-limited credentials.
    turn_urls: tuple[str, ...] = field(default_factory=tuple)
    turn_secret: str = ""
    turn_ttl_s: int = 12 * 3600

    # Signalling limits.
    max_message_bytes: int = 64 * 1024
    # Frames above this are refused by the WebSocket layer itself and close the socket.
    max_frame_bytes: int = 1024 * 1024
    messages_per_second: float = 20.0
    message_burst: int = 40
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 30.0
    hello_timeout_s: float = 10.0
    resume_grace_s: float = 20.0
    # New sessions are refused (`unavailable`, the client retries) while the event loop
    # runs this many seconds behind; well under node_timeout_s, so an overloaded node
    # sheds load instead of missing its heartbeat and being reaped. 0 disables.
    overload_lag_s: float = 2.0
    # Presence keys (participants, kiosks) are rewritten on a ping only when this
    # fraction of their TTL has passed since the last write, not on every ping.
    presence_refresh_fraction: float = 1 / 3
    resume_buffer_messages: int = 256
    # The same buffer is also capped by size (JSON characters): a few large offers or
    # snapshots must not pin much memory per connection.
    resume_buffer_bytes: int = 64 * 1024

    # A room's activity record (guests allowed, large-room video rules) is cached this
    # long per node: every join needs it. Staff edits reach joins within this time.
    activity_cache_s: float = 5.0
    activity_cache_entries: int = 10_000

    # Room limits.
    max_participants_per_room: int = 30
    # A family call rings this long before it counts as missed.
    ring_timeout_s: float = 45.0

    # Media.
    # ICE servers handed to aiortc and to clients; empty means host candidates only
    # (never aiortc's implicit public STUN default).
    ice_servers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # ICE host candidates only on these addresses (empty: every interface, as aioice does).
    media_addresses: tuple[str, ...] = field(default_factory=tuple)
    # Request a keyframe from a producer at most this often, however many ask.
    keyframe_request_interval_s: float = 0.25
    # Per-subscriber layer selection (simulcast / temporal layers; server/consumer.py).
    # An upward layer switch (a probe) waits this long after the last switch.
    layer_up_hold_s: float = 4.0
    # A switch to another simulcast layer gives up if that layer's keyframe has not come by then.
    layer_switch_timeout_s: float = 2.0
    # One subscriber's repeated keyframe request reaches the publisher at most this often. A
    # request after a keyframe did reach it is a failure: each one within the window of the
    # last doubles that wait (up to the maximum), and this many move the subscriber a
    # simulcast layer down, for the hold time.
    subscriber_keyframe_interval_s: float = 1.0
    subscriber_keyframe_max_interval_s: float = 10.0
    keyframe_failures_to_step_down: int = 3
    keyframe_failure_window_s: float = 10.0
    step_down_hold_s: float = 20.0
    # How often each subscriber's bandwidth estimate is shared out among its video streams.
    layer_allocation_interval_s: float = 1.0
    # Tiles one `layout` message may list.
    max_layout_tiles: int = 64
    negotiation_timeout_s: float = 15.0
    # A gap in a publisher's packets is NACKed only once it is older than the reordering the
    # link has shown lately (x 1.25), but at least the minimum and at most the maximum:
    # over jittery Wi-Fi, packets that were merely overtaken were retransmitted for nothing.
    nack_reorder_min_s: float = 0.005
    nack_reorder_max_s: float = 0.04
    # Datagrams read from one ICE socket per event-loop pass (asyncio reads one): a busy
    # publisher's socket must not fall behind when a pass is slow (see server/rtphooks.py).
    ice_read_batch: int = 64
    # What publishers are asked to send: the host and the spotlit participant at full
    # quality, everyone else as a small tile (family calls: everyone full).
    main_video_bitrate_bps: int = 1_000_000
    main_video_height: int = 720
    tile_video_bitrate_bps: int = 150_000
    tile_video_height: int = 240
    # Activities with more participants than this forward seniors' video (tiles) to hosts
    # only; everyone still receives the host's and the spotlit participant's video.
    tiles_to_everyone_up_to: int = 6
    # Music mode: Opus for choir and music (stereo, this bitrate, no DTX).
    music_opus_bitrate_bps: int = 128_000
    # Last-N audio: forward only the N loudest voices (plus the host) to everyone.
    last_n_audio: int = 3
    speaker_interval_s: float = 0.3

    # `verzilvering serve` only: garbage collector tuning (see server/cli.py _tune_gc).
    gc_freeze_after_start: bool = True
    # Allocations between first-generation collections (Python's default is 700); 0 keeps
    # the interpreter's setting.
    gc_gen0_threshold: int = 10_000

    # Reverse proxies (nginx) whose X-Forwarded-For / X-Real-IP / X-Forwarded-Proto headers
    # are believed: addresses or networks (CIDR). A request from anywhere else is taken at
    # its socket address, so a client cannot pose as another by sending those headers.
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)

    # Web pages (web/): staff sessions, login throttling, invites and photos.
    # A staff session cookie is valid this long after login.
    session_ttl_s: int = 12 * 3600
    # This many failed logins for one username, or from one address, within the window
    # lock further attempts for that username or address until the window has passed.
    login_max_failures: int = 5
    login_failure_window_s: float = 15 * 60.0
    # Family invite links stay valid this long (a new link can be made at any time).
    invite_ttl_days: int = 180
    # Largest photo upload accepted; photos are re-encoded to a small JPEG.
    photo_max_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f"VERZILVERING_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def _parse(type_name: Any, raw: str, name: str) -> Any:
    type_name = str(type_name)
    try:
        if type_name == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "Path":
            return Path(raw)
        if type_name.startswith("tuple"):
            import json

            return tuple(json.loads(raw))
    except ValueError as exc:
        raise ValueError(f"VERZILVERING_{name.upper()}: {exc}") from None
    return raw
