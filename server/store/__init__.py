"""State behind one interface: the embedded backend (default) and Redis."""

from ..config import Settings
from . import base
from .base import *  # noqa: F403 (the names base.__all__ lists)

__all__ = [*base.__all__, "open_store"]


async def open_store(settings: Settings, node_id: str) -> Store:
    """Opens the backend the settings ask for: Redis when a URL is set, else embedded."""
    if settings.redis_url:
        # Each backend is imported only when chosen: a node loads one store's code, not both.
        from .redis import RedisStore

        store: Store = RedisStore(
            settings.redis_url,
            node_id=node_id,
            prefix=settings.redis_prefix,
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_s,
        )
    else:
        from .embedded import EmbeddedStore

        store = EmbeddedStore(settings.data_dir, node_id=node_id)
    await store.open()
    return store
