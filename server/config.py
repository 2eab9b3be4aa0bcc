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
    # No join token lives longer (the CLI's --ttl included); a revocation (a removed
    # account, a replaced invite, an ended activity) is kept this long, until every token
    # issued before it has expired.
    max_token_ttl_s: int = 12 * 3600
    # Join tokens minted for an open page (the /host console, a family member's activity
    # page) live this long; the page fetches a fresh one well before, from its staff
    # session or invite (a logged-out or removed account, a replaced invite gets none).
    page_token_ttl_s: int = 15 * 60

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
    # A live node whose channel has had no subscriber this long is treated as gone (a
    # killed process drops its Redis connections at once, long before node_timeout_s):
    # its rooms are placed elsewhere and clients relayed to it reconnect. Never within
    # node_timeout_s after this node itself lost Redis (everyone resubscribes then).
    node_unreachable_s: float = 0.5
    # A relayed frame nobody took (the room's node is resubscribing after a Redis outage)
    # is published again for up to this long; then the client hears `unavailable`, or
    # `reconnect` when the room's node is gone.
    relay_retry_s: float = 3.0
    # Relayed frames of one connection waiting to be published, at most.
    relay_queue_frames: int = 64
    # On SIGTERM, how long to wait for clients to move elsewhere before exiting.
    drain_timeout_s: float = 30.0

    # TURN (coturn's REST-API shared-secret scheme); clients get time-limited credentials.
    turn_urls: tuple[str, ...] = field(default_factory=tuple)
    turn_secret: str = ""
    turn_ttl_s: int = 12 * 3600

    # Signalling limits.
    max_message_bytes: int = 64 * 1024
    # Objects and arrays in a message nest at most this deep (`bad_message` beyond): the
    # deepest real message (a kiosk's self-test result) is 5 levels.
    max_message_depth: int = 16
    # Frames above this are refused by the WebSocket layer itself and close the socket.
    max_frame_bytes: int = 1024 * 1024
    messages_per_second: float = 20.0
    message_burst: int = 40
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 30.0
    hello_timeout_s: float = 10.0
    # Text waiting to be sent to one client; a client that stops reading is dropped beyond
    # it (close 4008), so it cannot pin the node's memory. Far above a room snapshot or offer.
    max_outbound_bytes: int = 256 * 1024
    # Every close (flush, close handshake) ends within this, whatever the peer does: then
    # the TCP connection is closed, or aborted when the peer does not read. Below
    # hello_timeout_s + 2 s for a socket that never said hello (issue 11).
    close_timeout_s: float = 1.0
    # Error replies per connection: this many per second, bursts up to error_reply_burst;
    # a client that earns more is closed (4009) instead of answered.
    error_replies_per_s: float = 1.0
    error_reply_burst: int = 20
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
    # An activity a host starts now ("Start now" at /host) shows as running on its seniors'
    # kiosks this long, whatever its weekly slots say.
    started_activity_min: int = 60

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
    # Per-subscriber layer selection (simulcast / temporal layers; server/sfu/consumer.py).
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
    # publisher's socket must not fall behind when a pass is slow (see server/rtc/rtphooks.py).
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

    # When set, /metrics answers only requests with "Authorization: Bearer <token>" (for a
    # Prometheus that is not on nginx's allow-list of addresses); empty: nginx decides.
    metrics_token: str = ""

    # Reverse proxies (nginx) whose X-Forwarded-For / X-Real-IP / X-Forwarded-Proto headers
    # are believed: addresses or networks (CIDR). A request from anywhere else is taken at
    # its socket address, so a client cannot pose as another by sending those headers.
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)

    # Connections that have not signed in (any HTTP request, a WebSocket before its hello);
    # see server/connections.py and docs/operations.md "Hardening".
    # Until a request's headers are complete, from the connection's start or the end of
    # its previous request (slow headers, idle keep-alive).
    http_header_timeout_s: float = 10.0
    # Until a request's body has arrived, from its headers (slow uploads; nginx buffers
    # request bodies, so behind it this is the proxy's pace, not the client's).
    http_body_timeout_s: float = 20.0
    # An idle keep-alive connection is closed after this (aiohttp's default is an hour).
    http_keepalive_timeout_s: float = 5.0
    # At most this many at once per node (never more than half the open-files limit; the
    # rest is for signed-in clients and media): beyond it a new connection pushes out the
    # oldest idle one, or is refused.
    max_unauthenticated_connections: int = 1000
    # ... and per client address (the trusted proxy's word for it behind nginx).
    max_connections_per_address: int = 100
    # "socket.accept() out of system resource" (the open-files limit is reached) is logged
    # once per this interval, with a count.
    accept_error_log_interval_s: float = 10.0

    # Web pages (web/): staff sessions, login throttling, invites and photos.
    # A staff session (a store record the login cookie names) ends this long after login
    # however busy, and after session_idle_s without a request (an open host console
    # renews its token, and so the session, every few minutes).
    session_ttl_s: int = 12 * 3600
    session_idle_s: int = 30 * 60
    # This many failed logins for one username within the window lock further attempts for
    # that username until the window has passed; an address (behind a trusted proxy: the
    # client's own) is locked after login_max_failures_per_address, for any names.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 20
    login_failure_window_s: float = 15 * 60.0
    # Anonymous JSON endpoints: kiosk pairing starts per client address, and family calls
    # started per invite (contact), each within its window (store counters, all nodes).
    pairing_start_limit: int = 20
    pairing_start_window_s: float = 600.0
    # A kiosk's pairing code is valid this long: the time a coordinator has to enter it
    # (the kiosk then shows a new one).
    pairing_ttl_s: int = 15 * 60
    call_start_limit: int = 10
    call_start_window_s: float = 600.0
    # Family invite links stay valid this long (a new link can be made at any time).
    invite_ttl_days: int = 180
    # Largest photo upload accepted; photos are re-encoded to a small JPEG. Only logged-in
    # staff may send a body this large; anyone else's form is at most form_max_bytes, and
    # nobody's body is read before the origin, session and size are checked.
    photo_max_bytes: int = 8 * 1024 * 1024
    form_max_bytes: int = 64 * 1024
    # A photo's pixels (width × height, read from its header before it is decoded) at most:
    # decoding costs memory per pixel, whatever the file's size. 25 MP takes a phone's
    # default photo (12–24 MP); 48/50 MP modes are refused with a message.
    photo_max_pixels: int = 25_000_000

    # Attendance and the coordinators' engagement pages (server/attendance.py, web/engagement.py).
    # A senior's visits to one occurrence closer together than this count as one stay
    # (a kiosk reconnecting is not a second visit).
    attendance_merge_gap_s: float = 300.0
    # A join this long before a scheduled start, or up to this long after its end, belongs
    # to that occurrence; other joins make an unscheduled occurrence of their own day.
    attendance_early_s: float = 30 * 60.0
    attendance_late_s: float = 60 * 60.0
    # A stay whose leave was never recorded (a lone node crashed) counts until its
    # occurrence's window ends; in a family call, at most this long.
    attendance_call_cap_s: float = 6 * 3600.0
    # Bounds of one occurrence's record: people in it, stays per person.
    attendance_max_members: int = 500
    attendance_max_intervals: int = 50
    # After this many days records keep only anonymous counts (no ids, no times per person).
    attendance_retention_days: int = 365
    # How often one node applies the retention (a store lock makes it one node at a time).
    attendance_retention_interval_s: float = 3600.0
    # "Vandaag" asks for fresh numbers this often while it is open.
    today_poll_s: float = 5.0
    # "Vandaag": a kiosk offline longer than this needs a visit.
    kiosk_attention_offline_s: float = 24 * 3600.0
    # The reach-out list: enrolled seniors without an activity or family call this many days.
    reach_out_days: int = 7
    # "Vandaag" shows this many of them; the whole list is one click away.
    reach_out_on_today: int = 20
    # The full list at /admin/reach-out, this many a page.
    reach_out_page_size: int = 50
    # Trends and the aggregated export cover this many weeks by default (a quarter).
    trend_weeks: int = 13

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
