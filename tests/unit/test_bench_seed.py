"""bench.capacity's activity-now seeds a real directory Activity the server then finds."""

from __future__ import annotations

from pathlib import Path

from bench.capacity import seed_activities
from server.directory import Activity, Directory
from server.store.embedded import EmbeddedStore


async def test_seeded_activity_is_what_the_server_store_reads(tmp_path: Path) -> None:
    await seed_activities(tmp_path, ("activity-now",))
    store = EmbeddedStore(tmp_path)
    await store.open()
    try:
        activity = await Directory(store).get(Activity, "activity-now")
        assert activity is not None and activity.capacity == 20
        assert await Directory(store).get(Activity, "activity-adhoc") is None
    finally:
        await store.close()
