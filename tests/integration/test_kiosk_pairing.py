"""The kiosk appliance pairs itself, goes home, survives losing the server, and pairs again
when revoked — headless, against the real server."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlparse

from kiosk_client.appliance import Mode
from kiosk_client.state import StateDir
from server.appkeys import DIRECTORY_KEY, SIGNALING_KEY, STORE_KEY
from server.directory import Kiosk
from server.pairing import confirm_pairing

from tests.conftest import RunningServer
from tests.kiosk_support import (
    SENIOR,
    CuttableProxy,
    kiosk_config,
    provision,
    real_clock,
    running_kiosk,
    screenshot,
    seed,
)
from tests.support import eventually


async def test_pairing_home_offline_and_revocation(server: RunningServer, tmp_path: Path) -> None:
    await seed(server)
    url = urlparse(server.url)
    proxy = CuttableProxy(url.hostname or "127.0.0.1", url.port or 80)
    proxy_url = await proxy.start()
    state_dir = tmp_path / "kiosk-state"
    clock = real_clock()
    try:
        async with running_kiosk(kiosk_config(proxy_url, state_dir), clock) as app:
            # First start: a six-digit code in huge digits, and a QR code for the coordinator.
            await eventually(lambda: app.model.pairing.code is not None, 10, "a pairing code")
            code = app.model.pairing.code
            assert code is not None and len(code) == 6 and code.isdigit()
            assert app.model.pairing.url == f"{proxy_url}/admin/kiosks/pair?code={code}"
            layout = screenshot(app, "pairing")
            assert any(t.text == f"{code[:3]} {code[3:]}" and t.size >= 120 for t in layout.texts), "code in huge digits"
            assert not StateDir(state_dir).credential_path.exists()

            # A coordinator enters the code on the web.
            kiosk = await confirm_pairing(server.app[STORE_KEY], server.app[DIRECTORY_KEY], code, SENIOR, actor="coordinator")
            await eventually(lambda: app.model.mode is Mode.HOME, 10, "the home screen after pairing")
            credential_path = StateDir(state_dir).credential_path
            assert stat.S_IMODE(credential_path.stat().st_mode) == 0o600
            assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
            stored = StateDir(state_dir).load_credential()
            assert stored is not None and stored.kiosk_id == kiosk.id
            assert app.model.senior["name"] == "Mevrouw Jansen"
            assert sorted(c.name for c in app.model.trusted_contacts) == ["Kees", "Sanne de Vries"]
            await eventually(lambda: "c-sanne" in app.photos, 10, "Sanne's photo")
            layout = screenshot(app, "home")
            assert not layout.text_shown("SV"), "Sanne's photo, not her initials"
            assert any(t.text == "K" for t in layout.texts), "Kees has no photo: his initial"
            assert layout.text_shown("Stoelgym") and layout.button("call:c-sanne") and layout.button("call:c-kees")
            assert layout.button("call:c-piet") is None, "only trusted family on the home screen"
            assert layout.button("volume_up") and layout.button("volume_down")
            assert layout.button("join") is None, "Join only lights up ten minutes before the start"

            # The network dies: a plain-words status line, then back by itself.
            connects = app.device.connects if app.device else 0
            proxy.cut_network()
            await eventually(lambda: app.model.mode is Mode.OFFLINE, 10, "the offline status")
            layout = screenshot(app, "offline")
            assert layout.text_shown("Geen verbinding — we proberen het opnieuw")
            proxy.restore_network()
            await eventually(lambda: app.model.mode is Mode.HOME and app.device is not None and app.device.connects > connects, 15, "reconnected")

            # The coordinator revokes the kiosk: credential wiped, a new code shown.
            directory = server.app[DIRECTORY_KEY]
            record = await directory.get(Kiosk, kiosk.id)
            assert record is not None
            record.revoked = True
            await directory.put(record, actor="coordinator")
            await server.app[SIGNALING_KEY].revoke_kiosk(kiosk.id)
            await eventually(lambda: app.model.mode is Mode.PAIRING and app.model.pairing.code not in (None, code), 10, "a new pairing code")
            assert not credential_path.exists()
            assert app.model.senior == {} and app.model.contacts == []
    finally:
        await proxy.close()


async def test_stored_credential_goes_straight_home_and_bad_one_pairs_again(server: RunningServer, tmp_path: Path) -> None:
    await seed(server)
    state_dir = tmp_path / "kiosk-state"
    credential = await provision(server, state_dir)
    clock = real_clock()
    async with running_kiosk(kiosk_config(server.url, state_dir), clock) as app:
        await eventually(lambda: app.model.mode is Mode.HOME, 10, "home without pairing")
        assert app.model.pairing.code is None
        assert app.model.kiosk_id == credential.kiosk_id
    # A credential the server does not know (e.g. the kiosk was deleted): device_invalid.
    state = StateDir(state_dir)
    state.save_credential(type(credential)(credential.kiosk_id, "not-the-credential", credential.server))
    async with running_kiosk(kiosk_config(server.url, state_dir), clock) as app:
        await eventually(lambda: app.model.mode is Mode.PAIRING and app.model.pairing.code is not None, 10, "pairing again")
        assert state.load_credential() is None


async def test_directory_change_refreshes_without_dropping_a_ringing_call(server: RunningServer, tmp_path: Path) -> None:
    from server.directory import Contact

    from tests.kiosk_support import family_call

    await seed(server)
    state_dir = tmp_path / "kiosk-state"
    await provision(server, state_dir)
    async with running_kiosk(kiosk_config(server.url, state_dir), real_clock()) as app:
        await eventually(lambda: app.model.mode is Mode.HOME, 10, "home")
        assert app.device is not None
        connects = app.device.connects
        await family_call(server, "c-piet")
        await eventually(lambda: app.model.mode is Mode.RINGING, 10, "ringing")
        directory = server.app[DIRECTORY_KEY]
        await directory.put(Contact(id="c-anna", senior_id=SENIOR, name="Anna", trusted=True), actor="coordinator")
        await server.app[SIGNALING_KEY].directory_changed(SENIOR)
        await eventually(lambda: app.device is not None and app.device.connects > connects, 10, "refreshed")
        await eventually(lambda: any(c.name == "Anna" for c in app.model.trusted_contacts), 5, "the new contact")
        assert app.model.mode is Mode.RINGING and app.model.notes == []
