"""Access that can be taken back before a token expires: revoked subjects and room bans.

A join token is signed and valid until its `exp`; these store records are what every node
checks besides the signature, at `hello` and at `join`:

- a **revocation** of a subject refuses every token for it issued before the revocation:
  `participant:<id>` (a staff account removed or switched off, a family contact's invite
  replaced or the contact removed, a senior removed) and `room:<id>` (the activity was
  ended: its earlier tokens are spent, a freshly issued one works). Kept `max_token_ttl_s`,
  after which every token it could refuse has expired anyway;
- a **ban** keeps a kicked participant out of that room until their token expires, whatever
  token they come back with, unless a moderator lets them back (`unban`).

Sessions already connected are told on the store channel `CHANNEL`, so every node closes
its own (close code 4007).
"""

from __future__ import annotations

import time
from typing import Any

from server.store import AccessCheck, AccessRefused, Store, Subscription
from server.store.base import EventHandler, check_access

from .tokens import Grant, TokenError

CHANNEL = "access:revoked"


def participant_subject(participant_id: str) -> str:
    return f"participant:{participant_id}"


def room_subject(room: str) -> str:
    return f"room:{room}"


class Revocations:
    def __init__(self, store: Store, keep_s: float) -> None:
        self.store = store
        self.keep_s = keep_s

    @staticmethod
    def access_check(grant: Grant) -> AccessCheck:
        """What the store checks for this token, at hello and in the join step itself."""
        return AccessCheck(grant.issued_at, (room_subject(grant.room), participant_subject(grant.participant_id)))

    async def check(self, grant: Grant) -> None:
        """Raises TokenError (`activity_ended`, `token_revoked`, `banned`) for a token that
        was taken back; one store round trip."""
        access = self.access_check(grant)
        revoked, ban = await self.store.access(list(access.subjects), grant.room, grant.participant_id)
        try:
            check_access(access, revoked, ban is not None)
        except AccessRefused as exc:
            raise self.refusal(exc) from None

    @staticmethod
    def refusal(exc: AccessRefused) -> TokenError:
        """The protocol error for a refused token (a failed check, or a refused join)."""
        if exc.subject is None:
            return TokenError("banned", "A host removed you from this activity.")
        if exc.subject.startswith("room:"):
            return TokenError("activity_ended", "This activity has ended; ask for a new link.")
        return TokenError("token_revoked", "This link has been withdrawn; ask for a new one.")

    async def revoke_participant(self, participant_id: str) -> None:
        """Refuses every token issued so far to the participant and closes their sessions."""
        at = time.time()
        await self.store.revoke(participant_subject(participant_id), at, self.keep_s)
        await self.store.publish(CHANNEL, {"type": "_revoked", "participant_id": participant_id, "before": at})

    async def end_room(self, room: str) -> None:
        """Spends every token issued so far for the room (its sessions are ended by the caller)."""
        await self.store.revoke(room_subject(room), time.time(), self.keep_s)

    async def ban(self, room: str, participant_id: str, name: str, until: float) -> None:
        await self.store.ban(room, participant_id, {"name": name}, until)

    async def unban(self, room: str, participant_id: str) -> bool:
        return await self.store.unban(room, participant_id)

    async def banned(self, room: str) -> list[dict[str, Any]]:
        """The room's bans for moderators: [{participant_id, name}], by name."""
        bans = await self.store.bans(room)
        return sorted(
            ({"participant_id": pid, "name": str(info.get("name", ""))} for pid, info in bans.items()),
            key=lambda b: (b["name"].lower(), b["participant_id"]),
        )

    async def subscribe(self, handler: EventHandler) -> Subscription:
        return await self.store.subscribe(CHANNEL, handler)
