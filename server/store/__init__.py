"""State behind one interface: the embedded backend (default) and Redis."""

from .base import (
    ADMIT,
    AccessCheck,
    AccessRefused,
    ADMIT_UNLESS_LOCKED,
    DIRECTORY_KINDS,
    LOBBY,
    JoinResult,
    ParticipantState,
    RoomFull,
    Store,
    StoreUnavailable,
    Subscription,
    TrackState,
)

__all__ = [
    "ADMIT",
    "AccessCheck",
    "AccessRefused",
    "ADMIT_UNLESS_LOCKED",
    "DIRECTORY_KINDS",
    "LOBBY",
    "JoinResult",
    "ParticipantState",
    "RoomFull",
    "Store",
    "StoreUnavailable",
    "Subscription",
    "TrackState",
    "open_store",
]


async def open_store(settings: "object", node_id: str) -> Store:
    """Opens the backend the settings ask for: Redis when a URL is set, else embedded."""
    redis_url = getattr(settings, "redis_url", "")
    if redis_url:
        # Each backend is imported only when chosen: a node loads one store's code, not both.
        from .redis import RedisStore

        store: Store = RedisStore(
            redis_url,
            node_id=node_id,
            prefix=getattr(settings, "redis_prefix", "vz:"),
            max_connections=getattr(settings, "redis_max_connections", 100),
            pool_timeout_s=getattr(settings, "redis_pool_timeout_s", 2.0),
        )
    else:
        from .embedded import EmbeddedStore

        store = EmbeddedStore(getattr(settings, "data_dir"), node_id=node_id)
    await store.open()
    return store
