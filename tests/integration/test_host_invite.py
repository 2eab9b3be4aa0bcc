"""A host sees who is missing and rings that senior's kiosk: the real server, a real device channel.

The kiosk gets `activity_invite` and nothing else; the host gets `invite_sent`, or a clear
error (not enrolled, already here, kiosk offline). Across nodes the same path goes through
the store's device channel (tests/e2e/test_attendance_cluster.py covers the cluster itself).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from server.appkeys import DIRECTORY_KEY
from server.directory import Activity, Senior

from tests.conftest import RunningServer, WsClient, join
from tests.kiosk_support import _device, _directory, _pair


async def test_host_sees_enrolled_and_rings_a_missing_seniors_kiosk(
    server: RunningServer, connect: Any, http: aiohttp.ClientSession  # noqa: F811
) -> None:
    await _directory(server)
    await server.app[DIRECTORY_KEY].put(Senior(id="s-2", name="Meneer de Vries"), actor="test")
    activity = await server.app[DIRECTORY_KEY].get(Activity, "a-gym")
    assert activity is not None
    activity.enrolled = ["s-1", "s-2"]
    await server.app[DIRECTORY_KEY].put(activity, actor="test")
    credential = await _pair(server, http)
    kiosk, _ = await _device(connect, credential)

    host: WsClient = await connect()
    joined = await join(host, server.token(role="host", room="a-gym", name="Ingrid", participant_id="h-1"), "a-gym")
    assert joined["enrolled"] == [{"id": "s-1", "name": "Mevrouw Jansen"}, {"id": "s-2", "name": "Meneer de Vries"}]

    await host.send({"type": "invite_senior", "senior_id": "s-1", "id": "inv-1"})
    sent = await host.expect("invite_sent")
    assert sent == {"type": "invite_sent", "ref": "inv-1", "senior_id": "s-1", "kiosks": 1, "seq": sent["seq"]}
    invitation = await kiosk.expect("activity_invite")
    assert {k: invitation[k] for k in ("activity_id", "title", "host")} == {"activity_id": "a-gym", "title": "Stoelgym", "host": "Ingrid"}

    # s-2 has no kiosk; someone not enrolled; a participant may not ring anyone.
    await host.send({"type": "invite_senior", "senior_id": "s-2", "id": "inv-2"})
    await host.expect_error("senior_offline")
    await host.send({"type": "invite_senior", "senior_id": "s-nobody", "id": "inv-3"})
    await host.expect_error("not_enrolled")
    senior: WsClient = await connect()
    await join(senior, server.token(role="senior", room="a-gym", name="Mevrouw Jansen", participant_id="s-1"), "a-gym")
    await host.send({"type": "invite_senior", "senior_id": "s-1", "id": "inv-4"})
    await host.expect_error("already_present")
    await senior.send({"type": "invite_senior", "senior_id": "s-2"})
    await senior.expect_error("forbidden")
    assert "enrolled" not in senior.received[1]  # only hosts learn who is enrolled
