"""Files in the data directory: 0600 files in a 0700 directory, whatever the umask, and
/metrics behind a bearer token when one is set — through the real app and store."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.config import Settings
from server.invites import named_secret
from server.store.embedded import DATABASE_FILE, EmbeddedStore
from signaling.tokens import load_or_create_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Any:
    """The most permissive umask a service could run with."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


async def test_the_directory_database_and_secrets_are_private(tmp_path: Path, open_umask: None) -> None:
    data_dir = tmp_path / "data"
    load_or_create_secret(data_dir)
    named_secret(Settings(data_dir=data_dir), "session")
    store = EmbeddedStore(data_dir)
    await store.open()
    try:
        await store.put_record("people", "p-1", {"id": "p-1", "name": "Oma Riet"})
        files = sorted(p.name for p in data_dir.iterdir())
        assert DATABASE_FILE in files and f"{DATABASE_FILE}-wal" in files and f"{DATABASE_FILE}-shm" in files
        assert _mode(data_dir) == 0o700
        for path in data_dir.iterdir():
            assert _mode(path) == 0o600, f"{path.name} is {oct(_mode(path))}"
    finally:
        await store.close()


async def test_an_older_readable_data_dir_is_made_private(tmp_path: Path, open_umask: None) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    for name in (DATABASE_FILE, f"{DATABASE_FILE}-wal"):
        (data_dir / name).touch()
        os.chmod(data_dir / name, 0o644)
    (data_dir / f"{DATABASE_FILE}-wal").unlink()
    store = EmbeddedStore(data_dir)
    await store.open()
    try:
        assert await store.get_record("people", "nobody") is None
        assert _mode(data_dir) == 0o700
        for path in data_dir.iterdir():
            assert _mode(path) == 0o600, f"{path.name} is {oct(_mode(path))}"
    finally:
        await store.close()


@pytest.mark.parametrize("token", ["", "s3cret-metrics-token"])
async def test_metrics_need_the_bearer_token_when_one_is_set(
    tmp_path: Path, aiohttp_client: Any, token: str
) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", metrics_token=token))
    client = await aiohttp_client(app)
    plain = await client.get("/metrics")
    if not token:
        assert plain.status == 200 and "verzilvering_" in await plain.text()
        return
    assert plain.status == 401 and plain.headers["WWW-Authenticate"].startswith("Bearer")
    assert "verzilvering_" not in await plain.text()
    for wrong in ("Bearer nope", f"Basic {token}", f"Bearer {token}x", "Bearer"):
        assert (await client.get("/metrics", headers={"Authorization": wrong})).status == 401
    good = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert good.status == 200 and "verzilvering_" in await good.text()
    # Health checks stay open for the load balancer.
    assert (await client.get("/healthz")).status == 200
