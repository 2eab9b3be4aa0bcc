"""Staff sessions kept in the store: what a login cookie stands for.

The signed cookie (web/auth.py) carries a random session id; the store keeps a record under
its SHA-256 (a leaked store reveals no usable cookie) with the account, when the session
began and when it was last used. A request whose record is gone, idle longer than
`session_idle_s` or older than `session_ttl_s` has no session. Logging out ends the record;
a password change ends the account's other records; removing or switching off the account
ends all of them. A copied cookie is worth nothing after any of these.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from server.directory import Account, Directory
from server.store import Store

# Last use is written at most this often per session (a store write per page otherwise).
TOUCH_INTERVAL_S = 60.0


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(eq=False)
class StaffSessions:
    store: Store
    directory: Directory
    _: KW_ONLY
    idle_s: float
    absolute_s: float
    # Wall-clock seconds; tests replace it to let sessions age.
    clock: Callable[[], float] = time.time

    def _touch_interval(self) -> float:
        return min(TOUCH_INTERVAL_S, self.idle_s / 4)

    async def _put(self, key: str, account_id: str, created: float, seen: float) -> None:
        left = min(self.idle_s + self._touch_interval(), self.absolute_s - (seen - created))
        await self.store.put_staff_session(key, {"account": account_id, "created": created, "seen": seen}, max(left, 1.0))

    async def start(self, account_id: str) -> str:
        """A new session for the account; returns its id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        await self._put(_key(session_id), account_id, now, now)
        return session_id

    async def account(self, session_id: str) -> Account | None:
        """The account of a live session, its use noted; None (and the record ended) when
        the session is over or the account removed or switched off."""
        if not isinstance(session_id, str) or not session_id:
            return None
        key = _key(session_id)
        record = await self.store.get_staff_session(key)
        if record is None:
            return None
        now = self.clock()
        created, seen = float(record.get("created", 0)), float(record.get("seen", 0))
        account = await self.directory.get(Account, str(record.get("account", "")))
        if now - seen > self.idle_s or now - created > self.absolute_s or account is None or account.disabled:
            await self.store.delete_staff_session(key)
            return None
        if now - seen >= self._touch_interval():
            await self._put(key, account.id, created, now)
        return account

    async def end(self, session_id: str | None) -> None:
        if isinstance(session_id, str) and session_id:
            await self.store.delete_staff_session(_key(session_id))

    async def end_all(self, account_id: str, *, keep: str | None = None) -> None:
        """Ends every session of the account but `keep` (a session id)."""
        await self.store.delete_staff_sessions(account_id, keep=_key(keep) if keep else None)
