"""Redis backend: live room state, presence, event fan-out and the directory shared by all nodes.

Key schema (every key starts with the store's prefix, ``vz:`` by default):

``{prefix}room:{room}:participants``
    Hash participant_id → ParticipantState as JSON.
``{prefix}room:{room}:tracks``
    Hash track_id → TrackState as JSON.
``{prefix}room:{room}:state``
    String: the room's moderation state as JSON (locked, spotlight, music mode); deleted
    with the room's last participant.
``{prefix}nodes`` and ``{prefix}node:{node_id}``
    Set of registered node ids; per node a JSON string (load, draining) with a PX expiry
    refreshed by the node's heartbeat. A member whose key expired is a dead node.
``{prefix}room_node``
    Hash room → id of the node hosting the room's media (placement, LiveKit-style).
``{prefix}lock:{name}``
    SET NX PX locks, e.g. so only one node reaps a dead node's participants.
``{prefix}count:{name}``
    INCR counters (failed logins) whose PX expiry is set by the first count: fixed windows.
``{prefix}rooms``
    Hash room → participant count, for rooms with at least one participant. The Lua
    scripts that change a room's participants keep it in step with the participants hash.
``{prefix}presence:{participant_id}``
    String (the node id that last touched it) with a PX expiry of the presence TTL.
``{prefix}dir:{kind}``
    Hash record_id → record as JSON, one per directory kind.
``{prefix}events:{room}``
    Pub/sub channel; each message is one event as JSON.
``{prefix}revoked:{subject}``
    String: when the subject's tokens were revoked (Unix seconds); expires when every token
    issued before it has.
``{prefix}bans:{room}``
    Hash participant_id → {"info", "until"} as JSON: kicked participants kept out of the
    room; the hash expires with its last ban, entries past their `until` are ignored.
``{prefix}staff_session:{hash}`` and ``{prefix}staff_sessions:{account_id}``
    A logged-in staff session (JSON, PX expiry), and per account the set of its session keys.
``{prefix}att:{log_id}``, ``{prefix}att_index`` and ``{prefix}engaged``
    Attendance: one JSON string per activity occurrence or family call (changed only by
    the attend/depart scripts), a sorted set log id → start time, and a hash senior id →
    when they last took part. Durable like the directory.

What expires: only the presence keys, locks, counters, revocations, bans and staff sessions. Live room state stays until a
node removes it, so a node that dies without cleaning up leaves its participants behind (their ``node_id`` says
whose they were). The directory is as durable as the server's persistence settings (RDB or
AOF) make it. Pub/sub is fire-and-forget: events published while a node's subscriber
connection is down are lost to that node.

The scripts touch keys of one room plus the global ``rooms`` hash, so this backend needs a
single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..tasks import TaskOwner

from .base import (
    AccessCheck,
    AccessRefused,
    AttendanceLimits,
    EventHandler,
    JoinResult,
    ParticipantState,
    RoomFull,
    RoomSubscription,
    Store,
    StoreUnavailable,
    Subscription,
    TrackState,
    check_changes,
    check_kind,
    check_record_id,
    sort_participants,
    sort_tracks,
)

log = logging.getLogger(__name__)

# How long subscribe() waits for Redis to confirm a new channel subscription.
SUBSCRIBE_TIMEOUT_S = 5.0
# The reader wakes this often even when idle, so the client's health checks can run.
READER_POLL_S = 1.0
# Retries of a failed pub/sub read back off up to this: short, because until the reader
# is back (and has resubscribed) this node hears no room events and no relayed frames.
READER_BACKOFF_MAX_S = 0.5

# KEYS: participants, rooms. ARGV: room, participant_id, state json, max participants.
# Re-adding a participant already in the room is a replace and never hits the limit.
_ADD_PARTICIPANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], redis.call('HLEN', KEYS[1]))
return 1
"""

# KEYS: participants, rooms, room state, tracks, presence[, bans, revoked:<subject>...].
# ARGV: room, participant_id, state json if admitted, state json if in the lobby,
#       max participants, admission ("admit" | "lobby" | "unless_locked"), presence value,
#       presence expiry in ms[, token issued at, now] (both Unix seconds; with the
#       access keys).
# A join in one round trip: access checked (no subject revoked after the token, no ban),
# admission decided against the room's lock, the participant added (as _ADD_PARTICIPANT),
# presence set, and the room read back for the snapshot.
# Returns {-1, n} when the n-th revoked subject refuses the token, {-1, 0} when banned,
# {0} when the room is full, else {1, admitted 0/1, room state json or '',
# participants' json..., '--', tracks' json...}.
_JOIN_ROOM = """
if #KEYS > 5 then
  local issued = tonumber(ARGV[9])
  for i = 7, #KEYS do
    local at = redis.call('GET', KEYS[i])
    if at and issued < tonumber(at) then
      return {-1, i - 6}
    end
  end
  local ban = redis.call('HGET', KEYS[6], ARGV[2])
  if ban then
    local ok, entry = pcall(cjson.decode, ban)
    if ok and type(entry) == 'table' and tonumber(entry['until']) and tonumber(entry['until']) > tonumber(ARGV[10]) then
      return {-1, 0}
    end
  end
end
local room_state = redis.call('GET', KEYS[3])
local admitted = ARGV[6] == 'admit'
if ARGV[6] == 'unless_locked' then
  admitted = true
  if room_state then
    local ok, decoded = pcall(cjson.decode, room_state)
    if ok and type(decoded) == 'table' and decoded.locked == true then
      admitted = false
    end
  end
end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return {0}
end
redis.call('HSET', KEYS[1], ARGV[2], admitted and ARGV[3] or ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], redis.call('HLEN', KEYS[1]))
redis.call('SET', KEYS[5], ARGV[7], 'PX', tonumber(ARGV[8]))
local reply = {1, admitted and 1 or 0, room_state or ''}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  reply[#reply + 1] = value
end
reply[#reply + 1] = '--'
for _, value in ipairs(redis.call('HVALS', KEYS[4])) do
  reply[#reply + 1] = value
end
return reply
"""

# KEYS: participants, tracks, rooms, room state. ARGV: room, participant_id.
# The room's state (lock, spotlight, music mode) goes with its last participant.
# Returns the removed state json, or nil when the participant was not in the room.
_REMOVE_PARTICIPANT = """
-- Everything that can fail (decoding) runs before the first write, because Redis does
-- not roll back the writes of a script that errors.
local state = redis.call('HGET', KEYS[1], ARGV[2])
if not state then
  return false
end
local owned = {}
local tracks = redis.call('HGETALL', KEYS[2])
for i = 1, #tracks, 2 do
  if cjson.decode(tracks[i + 1]).participant_id == ARGV[2] then
    owned[#owned + 1] = tracks[i]
  end
end
redis.call('HDEL', KEYS[1], ARGV[2])
if #owned > 0 then
  redis.call('HDEL', KEYS[2], unpack(owned))
end
local count = redis.call('HLEN', KEYS[1])
if count == 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[4])
else
  redis.call('HSET', KEYS[3], ARGV[1], count)
end
return state
"""

# KEYS: participants, tracks. ARGV: participant_id, track_id, track json.
# Checked in the same script as the write so a track can never outlive its participant.
_ADD_TRACK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS: hash. ARGV: field, expected json, new json.
# Compare-and-set: 1 written, 0 field gone, -1 changed since it was read.
_COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return 0
end
if current ~= ARGV[2] then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: room_node. ARGV: room, candidate node, live node ids...
# Keeps a live owner; otherwise (no owner, or a dead one) the candidate takes the room.
_PLACE_ROOM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  for i = 3, #ARGV do
    if ARGV[i] == current then
      return current
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""

# KEYS: room_node. ARGV: room, node. Compare-and-delete: never drops another node's claim.
_RELEASE_ROOM = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: counter. Takes one back only from a live, positive counter: DECR alone would
# create a key of -1 without an expiry when the window has just ended.
_UNCOUNT = """
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
if value and value > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""

# KEYS: revoked:<subject>. ARGV: at, keep ms. Keeps the later revocation.
_REVOKE = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: a hash or set. ARGV: field, value (hash) or member (set, value ""), ms to keep.
# Adds the entry and makes the key live at least that long (never shortens it).
_ADD_KEEPING = """
if ARGV[2] == '' then
  redis.call('SADD', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""

# KEYS: log, index, engaged. ARGV: the new log's json, member, role, at, merge gap,
# max members, max intervals, start (index score), log id.
# base.attend_in in Lua: one round trip per join, atomic against every other node.
_ATTEND = """
local raw = redis.call('GET', KEYS[1])
local fresh = raw == false
local log = cjson.decode(fresh and ARGV[1] or raw)
if log.reduced == true then
  return 0
end
local at = tonumber(ARGV[4])
if type(log.members) ~= 'table' then
  log.members = {}
end
local entry = log.members[ARGV[2]]
local changed = fresh
if entry == nil then
  local count = 0
  for _ in pairs(log.members) do
    count = count + 1
  end
  if count < tonumber(ARGV[6]) then
    log.members[ARGV[2]] = {role = ARGV[3], iv = {{at}}}
    changed = true
  end
else
  local last = entry.iv[#entry.iv]
  if #last ~= 1 then
    if at <= last[2] + tonumber(ARGV[5]) or #entry.iv >= tonumber(ARGV[7]) then
      entry.iv[#entry.iv] = {last[1]}
    else
      entry.iv[#entry.iv + 1] = {at}
    end
    changed = true
  end
end
if changed then
  redis.call('SET', KEYS[1], cjson.encode(log))
end
if fresh then
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[9])
end
if ARGV[3] == 'senior' and at > tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0') then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
end
return 1
"""

# KEYS: log, engaged. ARGV: member, at. base.depart_in in Lua.
_DEPART = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local log = cjson.decode(raw)
if log.reduced == true or type(log.members) ~= 'table' then
  return 0
end
local entry = log.members[ARGV[1]]
if entry == nil then
  return 0
end
local last = entry.iv[#entry.iv]
if #last ~= 1 then
  return 0
end
local at = math.max(tonumber(ARGV[2]), last[1])
entry.iv[#entry.iv] = {last[1], at}
redis.call('SET', KEYS[1], cjson.encode(log))
if entry.role == 'senior' and at > tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"""

# Registered with the client when the store opens.
_SCRIPTS = (
    _ADD_PARTICIPANT, _JOIN_ROOM, _REMOVE_PARTICIPANT, _ADD_TRACK, _COMPARE_AND_SET, _PLACE_ROOM, _RELEASE_ROOM,
    _UNCOUNT, _REVOKE, _ADD_KEEPING, _ATTEND, _DEPART,
)

_State = TypeVar("_State", ParticipantState, TrackState)


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancel that interrupted the read comes out of redis-py as a dropped
            # connection: the caller was cancelled, not the store lost. As StoreUnavailable
            # it was caught by a loop that then slept on, and its owner's close() waited
            # for ever.
            raise asyncio.CancelledError() from exc
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except ResponseError as exc:
        # A full server (noeviction), a failed disk (MISCONF) or a replica after a failover
        # (READONLY) will pass: callers get a retryable answer, not an internal error.
        if isinstance(exc, _RETRYABLE_ERRORS) or str(exc).split(" ", 1)[0] in _RETRYABLE_REPLIES:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise


_RETRYABLE_REPLIES = {"OOM", "MISCONF", "READONLY", "LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN"}
# redis-py turns some replies into classes and drops their code from the message.
_RETRYABLE_ERRORS = (OutOfMemoryError, ReadOnlyError, BusyLoadingError)


def sentinel_client(url: str, **options: Any) -> aioredis.Redis:
    """`redis+sentinel://[:password@]host1:26379,host2:26379/service[/db]`: the primary
    that the Sentinels name, followed across failovers."""
    from urllib.parse import unquote

    rest = url[len("redis+sentinel://") :]
    auth, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError("a Sentinel URL needs hosts and a service name")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.partition(":")
        sentinels.append((name, int(port or 26379)))
    password = unquote(auth.partition(":")[2]) if auth else None
    sentinel = Sentinel(sentinels, password=password, **options)
    return sentinel.master_for(service, db=int(db or 0))




def _encode(state: ParticipantState | TrackState) -> str:
    return json.dumps(state.to_dict(), sort_keys=True)


def _live_bans(raw: dict[str, str]) -> dict[str, dict[str, Any]]:
    now = time.time()
    bans = {}
    for participant_id, text in raw.items():
        entry = json.loads(text)
        if entry["until"] > now:
            bans[participant_id] = entry["info"]
    return bans


class RedisStore(Store):
    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        prefix: str = "vz:",
        max_connections: int = 100,
        pool_timeout_s: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self._url = url
        self._prefix = prefix
        self._max_connections = max_connections
        self._pool_timeout_s = pool_timeout_s
        self._client: aioredis.Redis | None = None
        # One connection of the pool kept for node liveness (heartbeat, live and dead
        # nodes): a pool busy with joins must never make this node look dead or make it
        # think Redis is down.
        self._control: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        # The event reader's owner, replaced on close: a closed store may be opened again.
        self._tasks = TaskOwner("redis-store")
        # Each subscription is its own entry, so closing one never drops another that
        # happens to use the same handler.
        self._subscriptions: dict[str, list[RoomSubscription]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        # Serialises SUBSCRIBE/UNSUBSCRIBE so the registry and the server agree.
        self._subscribe_lock = asyncio.Lock()
        # Each Lua script above by its source, registered when the store opens.
        self._scripts: dict[str, AsyncScript] = {}

    # --- keys ----------------------------------------------------------------------------

    def _participants_key(self, room: str) -> str:
        return f"{self._prefix}room:{room}:participants"

    def _tracks_key(self, room: str) -> str:
        return f"{self._prefix}room:{room}:tracks"

    def _room_state_key(self, room: str) -> str:
        return f"{self._prefix}room:{room}:state"

    async def get_room_state(self, room: str) -> dict[str, Any]:
        with _unavailable():
            raw = await self._redis.get(self._room_state_key(room))
        return json.loads(raw) if raw is not None else {}

    async def set_room_state(self, room: str, state: dict[str, Any]) -> None:
        with _unavailable():
            await self._redis.set(self._room_state_key(room), json.dumps(state, sort_keys=True))

    def _rooms_key(self) -> str:
        return f"{self._prefix}rooms"

    def _presence_key(self, participant_id: str) -> str:
        return f"{self._prefix}presence:{participant_id}"

    def _directory_key(self, kind: str) -> str:
        return f"{self._prefix}dir:{kind}"

    def _channel(self, room: str) -> str:
        return f"{self._prefix}events:{room}"

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 5.0,
            "socket_timeout": 5.0,
            "socket_keepalive": True,
            # Lets the otherwise idle pub/sub connection notice a dead server.
            "health_check_interval": 30,
        }
        if self._url.startswith("redis+sentinel://"):
            client = sentinel_client(self._url, **options)
        else:
            # URL query parameters override these defaults. A blocking pool: above
            # max_connections a command waits (up to the pool timeout) instead of failing
            # at once, which under a burst of joins looked like a Redis outage.
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self._pool_timeout_s,
                **options,
            )
            client = aioredis.Redis.from_pool(pool)
        control = client.client()
        try:
            with _unavailable():
                await client.ping()
                # Takes the control connection out of the pool now, for good.
                await control.ping()
        except BaseException:
            await control.aclose()
            await client.aclose()
            raise
        self._client = client
        self._control = control
        self._pubsub = client.pubsub()
        self._scripts = {source: client.register_script(source) for source in _SCRIPTS}

    async def close(self) -> None:
        client, pubsub, tasks, control = self._client, self._pubsub, self._tasks, self._control
        if client is None:
            return
        self._client = self._pubsub = self._reader = self._control = None
        self._tasks = TaskOwner("redis-store")
        self._subscriptions.clear()
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                # Not cancel(): the waiting subscribe() was not cancelled, the store went.
                confirmed.set_exception(StoreUnavailable("store closed"))
        self._confirmations.clear()
        await tasks.close()
        if pubsub is not None:
            await pubsub.aclose()
        if control is not None:
            await control.aclose()
        await client.aclose()

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("store is not open")
        return self._client

    @property
    def _liveness(self) -> aioredis.Redis:
        if self._control is None:
            raise RuntimeError("store is not open")
        return self._control

    def _script(self, source: str) -> AsyncScript:
        if not self._scripts:
            raise RuntimeError("store is not open")
        return self._scripts[source]

    # --- live room state -------------------------------------------------------------

    async def add_participant(self, state: ParticipantState, max_participants: int) -> None:
        script = self._script(_ADD_PARTICIPANT)
        with _unavailable():
            added = await script(
                keys=[self._participants_key(state.room), self._rooms_key()],
                args=[state.room, state.participant_id, _encode(state), max_participants],
            )
        if not added:
            raise RoomFull(state.room)

    async def join_room(
        self, state: ParticipantState, admission: str, max_participants: int, presence_ttl_s: float,
        access: AccessCheck | None = None,
    ) -> JoinResult:
        if presence_ttl_s <= 0:
            # Redis refuses a zero expiry; the single steps handle that case.
            return await super().join_room(state, admission, max_participants, presence_ttl_s, access)
        access_keys: list[str] = []
        access_args: list[Any] = []
        if access is not None:
            access_keys = [self._bans_key(state.room), *(self._revoked_key(s) for s in access.subjects)]
            access_args = [repr(float(access.issued_at)), repr(time.time())]
        script = self._script(_JOIN_ROOM)
        room = state.room
        admitted_state = dataclasses.replace(state, admitted=True)
        lobby_state = dataclasses.replace(state, admitted=False)
        with _unavailable():
            reply = await script(
                keys=[
                    self._participants_key(room),
                    self._rooms_key(),
                    self._room_state_key(room),
                    self._tracks_key(room),
                    self._presence_key(state.participant_id),
                    *access_keys,
                ],
                args=[
                    room,
                    state.participant_id,
                    _encode(admitted_state),
                    _encode(lobby_state),
                    max_participants,
                    admission,
                    self.node_id,
                    max(1, math.ceil(presence_ttl_s * 1000)),
                    *access_args,
                ],
            )
        if reply[0] == -1:
            assert access is not None
            raise AccessRefused(access.subjects[reply[1] - 1] if reply[1] else None)
        if not reply[0]:
            raise RoomFull(room)
        split = reply.index("--", 3)
        return JoinResult(
            admitted_state if reply[1] else lobby_state,
            json.loads(reply[2]) if reply[2] else {},
            sort_participants(ParticipantState.from_dict(json.loads(v)) for v in reply[3:split]),
            sort_tracks(TrackState.from_dict(json.loads(v)) for v in reply[split + 1 :]),
        )

    async def remove_participant(self, room: str, participant_id: str) -> ParticipantState | None:
        script = self._script(_REMOVE_PARTICIPANT)
        with _unavailable():
            raw = await script(
                keys=[
                    self._participants_key(room),
                    self._tracks_key(room),
                    self._rooms_key(),
                    self._room_state_key(room),
                ],
                args=[room, participant_id],
            )
        return ParticipantState.from_dict(json.loads(raw)) if raw is not None else None

    async def get_participant(self, room: str, participant_id: str) -> ParticipantState | None:
        with _unavailable():
            raw = await self._redis.hget(self._participants_key(room), participant_id)
        return ParticipantState.from_dict(json.loads(raw)) if raw is not None else None

    async def list_participants(self, room: str) -> list[ParticipantState]:
        with _unavailable():
            values = await self._redis.hvals(self._participants_key(room))
        return sort_participants(ParticipantState.from_dict(json.loads(v)) for v in values)

    async def update_participant(
        self, room: str, participant_id: str, /, **changes: Any
    ) -> ParticipantState | None:
        return await self._update(
            ParticipantState, self._participants_key(room), participant_id, changes
        )

    async def add_track(self, track: TrackState) -> None:
        script = self._script(_ADD_TRACK)
        with _unavailable():
            added = await script(
                keys=[self._participants_key(track.room), self._tracks_key(track.room)],
                args=[track.participant_id, track.track_id, _encode(track)],
            )
        if not added:
            raise KeyError(f"participant {track.participant_id} is not in room {track.room}")

    async def remove_track(self, room: str, track_id: str) -> TrackState | None:
        key = self._tracks_key(room)
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(key, track_id)
                pipe.hdel(key, track_id)
                raw, _ = await pipe.execute()
        return TrackState.from_dict(json.loads(raw)) if raw is not None else None

    async def update_track(self, room: str, track_id: str, /, **changes: Any) -> TrackState | None:
        return await self._update(TrackState, self._tracks_key(room), track_id, changes)

    async def list_tracks(self, room: str) -> list[TrackState]:
        with _unavailable():
            values = await self._redis.hvals(self._tracks_key(room))
        return sort_tracks(TrackState.from_dict(json.loads(v)) for v in values)

    async def list_rooms(self) -> dict[str, int]:
        with _unavailable():
            counts = await self._redis.hgetall(self._rooms_key())
        return {room: int(count) for room, count in counts.items()}

    async def _update(
        self, cls: type[_State], key: str, field: str, changes: dict[str, Any]
    ) -> _State | None:
        script = self._script(_COMPARE_AND_SET)
        # Optimistic read-modify-write: a concurrent update of another field (say mute
        # and connected) must not be lost. A retry only happens when some other writer
        # succeeded, so the loop always makes progress.
        while True:
            with _unavailable():
                raw = await self._redis.hget(key, field)
            if raw is None:
                return None
            check_changes(cls, changes)
            state = dataclasses.replace(cls.from_dict(json.loads(raw)), **changes)
            with _unavailable():
                result = await script(keys=[key], args=[field, raw, _encode(state)])
            if result == 1:
                return state
            if result == 0:
                return None

    # --- presence ----------------------------------------------------------------------

    async def touch_presence(self, participant_id: str, ttl_s: float) -> None:
        key = self._presence_key(participant_id)
        with _unavailable():
            if ttl_s <= 0:
                # Redis refuses a zero expiry; an already expired presence is no presence.
                await self._redis.delete(key)
            else:
                await self._redis.set(key, self.node_id, px=max(1, math.ceil(ttl_s * 1000)))

    async def clear_presence(self, participant_id: str) -> None:
        with _unavailable():
            await self._redis.delete(self._presence_key(participant_id))

    async def is_present(self, participant_id: str) -> bool:
        with _unavailable():
            return bool(await self._redis.exists(self._presence_key(participant_id)))

    async def present_among(self, participant_ids: list[str]) -> set[str]:
        if not participant_ids:
            return set()
        with _unavailable():
            values = await self._redis.mget([self._presence_key(p) for p in participant_ids])
        return {p for p, v in zip(participant_ids, values) if v is not None}

    # --- nodes and room placement --------------------------------------------------------

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    async def heartbeat_node(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        with _unavailable():
            # Two commands on the control connection (a pipeline would take a pooled
            # connection). The key first: a member without its key counts as dead.
            await self._liveness.set(self._node_key(node_id), json.dumps(info), px=max(1, int(ttl_s * 1000)))
            await self._liveness.sadd(f"{self._prefix}nodes", node_id)

    async def _registered(self) -> tuple[list[str], list[Any]]:
        with _unavailable():
            members = sorted(await self._liveness.smembers(f"{self._prefix}nodes"))
            values = await self._liveness.mget([self._node_key(n) for n in members]) if members else []
        return members, values

    async def live_nodes(self) -> dict[str, dict[str, Any]]:
        members, values = await self._registered()
        return {n: json.loads(v) for n, v in zip(members, values) if v is not None}

    async def dead_nodes(self) -> list[str]:
        members, values = await self._registered()
        return [n for n, v in zip(members, values) if v is None]

    async def forget_node(self, node_id: str) -> None:
        rooms = await self.rooms_of_node(node_id)
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(f"{self._prefix}nodes", node_id)
                pipe.delete(self._node_key(node_id))
                await pipe.execute()
        for room in rooms:
            await self.release_room(room, node_id)

    async def place_room(self, room: str, node_id: str, live: list[str]) -> str:
        with _unavailable():
            owner = await self._script(_PLACE_ROOM)(
                keys=[f"{self._prefix}room_node"], args=[room, node_id, *live]
            )
        return owner

    async def room_owner(self, room: str) -> str | None:
        with _unavailable():
            return await self._redis.hget(f"{self._prefix}room_node", room)

    async def release_room(self, room: str, node_id: str) -> None:
        with _unavailable():
            await self._script(_RELEASE_ROOM)(keys=[f"{self._prefix}room_node"], args=[room, node_id])

    async def rooms_of_node(self, node_id: str) -> list[str]:
        with _unavailable():
            placements = await self._redis.hgetall(f"{self._prefix}room_node")
        return sorted(room for room, owner in placements.items() if owner == node_id)

    async def acquire_lock(self, name: str, ttl_s: float) -> bool:
        with _unavailable():
            return bool(
                await self._redis.set(f"{self._prefix}lock:{name}", self.node_id, nx=True, px=max(1, int(ttl_s * 1000)))
            )

    # --- counters ----------------------------------------------------------------------

    async def count(self, name: str, window_s: float) -> int:
        key = f"{self._prefix}count:{name}"
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                # NX: only the first count of a window sets when it ends.
                pipe.pexpire(key, max(1, math.ceil(window_s * 1000)), nx=True)
                value, _ = await pipe.execute()
        return int(value)

    async def counted(self, name: str) -> int:
        with _unavailable():
            value = await self._redis.get(f"{self._prefix}count:{name}")
        return int(value) if value is not None else 0

    async def uncount(self, name: str) -> None:
        with _unavailable():
            await self._script(_UNCOUNT)(keys=[f"{self._prefix}count:{name}"])

    async def reset_count(self, name: str) -> None:
        with _unavailable():
            await self._redis.delete(f"{self._prefix}count:{name}")

    # --- access revocation ---------------------------------------------------------------

    def _revoked_key(self, subject: str) -> str:
        return f"{self._prefix}revoked:{subject}"

    def _bans_key(self, room: str) -> str:
        return f"{self._prefix}bans:{room}"

    async def revoke(self, subject: str, at: float, keep_s: float) -> None:
        script = self._script(_REVOKE)
        with _unavailable():
            await script(keys=[self._revoked_key(subject)], args=[repr(float(at)), max(1, math.ceil(keep_s * 1000))])

    async def revocations(self, subjects: list[str]) -> dict[str, float]:
        if not subjects:
            return {}
        with _unavailable():
            values = await self._redis.mget([self._revoked_key(s) for s in subjects])
        return {s: float(v) for s, v in zip(subjects, values) if v is not None}

    async def ban(self, room: str, participant_id: str, info: dict[str, Any], until: float) -> None:
        script = self._script(_ADD_KEEPING)
        keep_ms = max(1, math.ceil((until - time.time()) * 1000))
        with _unavailable():
            await script(
                keys=[self._bans_key(room)],
                args=[participant_id, json.dumps({"info": info, "until": until}, sort_keys=True), keep_ms],
            )

    async def unban(self, room: str, participant_id: str) -> bool:
        banned = participant_id in await self.bans(room)
        with _unavailable():
            await self._redis.hdel(self._bans_key(room), participant_id)
        return banned

    async def bans(self, room: str) -> dict[str, dict[str, Any]]:
        with _unavailable():
            raw = await self._redis.hgetall(self._bans_key(room))
        return _live_bans(raw)

    async def access(
        self, subjects: list[str], room: str, participant_id: str
    ) -> tuple[dict[str, float], dict[str, Any] | None]:
        with _unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.mget([self._revoked_key(s) for s in subjects])
                pipe.hget(self._bans_key(room), participant_id)
                values, ban = await pipe.execute()
        revoked = {s: float(v) for s, v in zip(subjects, values) if v is not None}
        return revoked, _live_bans({participant_id: ban} if ban is not None else {}).get(participant_id)

    # --- staff sessions ----------------------------------------------------------------

    def _staff_session_key(self, key: str) -> str:
        return f"{self._prefix}staff_session:{key}"

    def _staff_sessions_key(self, account_id: str) -> str:
        return f"{self._prefix}staff_sessions:{account_id}"

    async def put_staff_session(self, key: str, record: dict[str, Any], ttl_s: float) -> None:
        script = self._script(_ADD_KEEPING)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        with _unavailable():
            await self._redis.set(self._staff_session_key(key), json.dumps(record, sort_keys=True), px=ttl_ms)
            await script(keys=[self._staff_sessions_key(record["account"])], args=[key, "", ttl_ms])

    async def get_staff_session(self, key: str) -> dict[str, Any] | None:
        with _unavailable():
            raw = await self._redis.get(self._staff_session_key(key))
        return json.loads(raw) if raw is not None else None

    async def delete_staff_session(self, key: str) -> None:
        with _unavailable():
            await self._redis.delete(self._staff_session_key(key))

    async def delete_staff_sessions(self, account_id: str, keep: str | None = None) -> int:
        index = self._staff_sessions_key(account_id)
        with _unavailable():
            keys = [k for k in await self._redis.smembers(index) if k != keep]
            if not keys:
                return 0
            ended = await self._redis.delete(*(self._staff_session_key(k) for k in keys))
            await self._redis.srem(index, *keys)
        return int(ended)

    # --- room event fan-out --------------------------------------------------------------

    async def publish(self, room: str, event: dict[str, Any]) -> int:
        payload = json.dumps(event)
        with _unavailable():
            # Redis counts receiving connections; each node has one pub/sub connection.
            return int(await self._redis.publish(self._channel(room), payload))

    async def subscribers(self, rooms: list[str]) -> dict[str, int]:
        if not rooms:
            return {}
        with _unavailable():
            # The control connection: a liveness question, like the heartbeat.
            counts = await self._liveness.pubsub_numsub(*[self._channel(room) for room in rooms])
        by_channel = {channel: int(count) for channel, count in counts}
        return {room: by_channel.get(self._channel(room), 0) for room in rooms}

    async def subscribe(self, room: str, handler: EventHandler) -> Subscription:
        pubsub = self._pubsub
        if pubsub is None:
            raise RuntimeError("store is not open")
        subscription = RoomSubscription(room, handler, self._unsubscribe)
        async with self._subscribe_lock:
            if self._pubsub is not pubsub:
                raise StoreUnavailable("store closed")
            subscriptions = self._subscriptions.get(room)
            if subscriptions is not None:
                subscriptions.append(subscription)
                return subscription
            # Registered before SUBSCRIBE so no event after the confirmation is missed.
            self._subscriptions[room] = [subscription]
            try:
                await self._subscribe_channel(pubsub, self._channel(room))
            except BaseException:
                self._subscriptions.pop(room, None)
                raise
        return subscription

    async def _subscribe_channel(self, pubsub: PubSub, channel: str) -> None:
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            try:
                with _unavailable():
                    await pubsub.subscribe(channel)
            finally:
                # close() ran meanwhile: whatever redis-py made of that, report it plainly,
                # and never start a reader that nothing would stop.
                if self._pubsub is not pubsub:
                    raise StoreUnavailable("store closed")
            if self._reader is None:
                self._reader = self._tasks.spawn(self._read_events(pubsub), name="redis-store-events")
            # Wait for Redis to confirm, so an event published by anyone once subscribe()
            # has returned is guaranteed to reach the handler.
            try:
                await asyncio.wait_for(confirmed, SUBSCRIBE_TIMEOUT_S)
            except BaseException as exc:
                await self._unsubscribe_channel(channel)
                if isinstance(exc, TimeoutError):
                    raise StoreUnavailable(f"no confirmation for SUBSCRIBE {channel}") from None
                raise
        finally:
            if self._confirmations.get(channel) is confirmed:
                del self._confirmations[channel]
            if confirmed.done() and not confirmed.cancelled():
                # Marks an error set by close() as seen even if SUBSCRIBE failed first.
                confirmed.exception()

    async def _unsubscribe(self, subscription: RoomSubscription) -> None:
        async with self._subscribe_lock:
            subscriptions = self._subscriptions.get(subscription.room)
            if not subscriptions or subscription not in subscriptions:
                return
            subscriptions.remove(subscription)
            if subscriptions:
                return
            del self._subscriptions[subscription.room]
            await self._unsubscribe_channel(self._channel(subscription.room))

    async def _unsubscribe_channel(self, channel: str) -> None:
        if self._pubsub is None:
            return
        try:
            await self._pubsub.unsubscribe(channel)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # The handlers are already gone, so nothing more is delivered; failing a
            # cleanup call would only hide the caller's own error.
            log.warning("could not unsubscribe from %s: %s", channel, exc)

    async def _read_events(self, pubsub: PubSub) -> None:
        backoff = 0.1
        while True:
            try:
                message = await pubsub.get_message(timeout=READER_POLL_S)
            except Exception as exc:
                # The reader must outlive outages: the client reconnects and resubscribes
                # on the next read. Only unexpected errors deserve a traceback.
                self.disrupted_at = time.monotonic()
                log.warning(
                    "Redis event reader: %s; retrying in %.1f s",
                    exc,
                    backoff,
                    exc_info=not isinstance(exc, RedisError),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, READER_BACKOFF_MAX_S)
                continue
            backoff = 0.1
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if message["type"] == "subscribe":
            confirmed = self._confirmations.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if message["type"] != "message":
            return
        room = channel[len(self._channel("")) :]
        subscriptions = self._subscriptions.get(room)
        if not subscriptions:
            return
        try:
            event = json.loads(message["data"])
        except ValueError:
            log.warning("dropping an event on %s that is not JSON", channel)
            return
        for subscription in list(subscriptions):
            try:
                subscription.handler(event)
            except Exception:
                # One broken handler must not stop delivery to the others or the reader.
                log.exception("event handler for room %s failed", room)

    # --- durable directory ------------------------------------------------------------------

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any]) -> None:
        check_kind(kind)
        check_record_id(record_id)
        text = json.dumps(data, sort_keys=True)
        with _unavailable():
            await self._redis.hset(self._directory_key(kind), record_id, text)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        check_kind(kind)
        with _unavailable():
            raw = await self._redis.hget(self._directory_key(kind), record_id)
        return json.loads(raw) if raw is not None else None

    async def get_records(self, kind: str, record_ids: list[str]) -> list[dict[str, Any] | None]:
        check_kind(kind)
        if not record_ids:
            return []
        with _unavailable():
            values = await self._redis.hmget(self._directory_key(kind), record_ids)
        return [json.loads(v) if v is not None else None for v in values]

    async def list_records(self, kind: str) -> list[dict[str, Any]]:
        check_kind(kind)
        with _unavailable():
            records = await self._redis.hgetall(self._directory_key(kind))
        return [json.loads(records[record_id]) for record_id in sorted(records)]

    async def delete_record(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        with _unavailable():
            return bool(await self._redis.hdel(self._directory_key(kind), record_id))

    # --- attendance ---------------------------------------------------------------------------

    def _attendance_key(self, log_id: str) -> str:
        return f"{self._prefix}att:{log_id}"

    async def attend(
        self, log: dict[str, Any], member: str, role: str, at: float, limits: AttendanceLimits
    ) -> None:
        check_record_id(log["id"])
        with _unavailable():
            await self._script(_ATTEND)(
                keys=[self._attendance_key(log["id"]), f"{self._prefix}att_index", f"{self._prefix}engaged"],
                args=[
                    json.dumps(log, sort_keys=True), member, role, repr(float(at)), limits.merge_gap_s,
                    limits.max_members, limits.max_intervals, repr(float(log["start"])), log["id"],
                ],
            )

    async def depart(self, log_id: str, member: str, at: float) -> None:
        with _unavailable():
            await self._script(_DEPART)(
                keys=[self._attendance_key(log_id), f"{self._prefix}engaged"], args=[member, repr(float(at))]
            )

    async def attendance_between(self, start_from: float, start_to: float) -> list[dict[str, Any]]:
        with _unavailable():
            ids = await self._redis.zrangebyscore(f"{self._prefix}att_index", start_from, f"({start_to}")
            values = await self._redis.mget([self._attendance_key(i) for i in ids]) if ids else []
        return [_attendance_log(v) for v in values if v is not None]

    async def replace_attendance(self, log: dict[str, Any]) -> None:
        check_record_id(log["id"])
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._attendance_key(log["id"]), json.dumps(log, sort_keys=True))
                pipe.zadd(f"{self._prefix}att_index", {log["id"]: float(log["start"])})
                await pipe.execute()

    async def last_engaged(self) -> dict[str, float]:
        with _unavailable():
            values = await self._redis.hgetall(f"{self._prefix}engaged")
        return {senior: float(at) for senior, at in values.items()}

    async def forget_engaged(self, senior_id: str) -> None:
        with _unavailable():
            await self._redis.hdel(f"{self._prefix}engaged", senior_id)


def _attendance_log(raw: str) -> dict[str, Any]:
    log = json.loads(raw)
    # Lua's cjson writes an empty table as {} and never as [], but be lenient.
    if isinstance(log.get("members"), list):
        log["members"] = {}
    return log
