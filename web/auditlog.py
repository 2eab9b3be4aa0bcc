"""The audit log in the coordinator's words: which details changed and who changed them.

`Directory.put` records the names of the fields that changed; a coordinator reads labels
("photo", "password"), never a field's name (`password_hash` must not even be hinted at by
its storage name), and internal bookkeeping fields are left out.
"""

from __future__ import annotations

from collections.abc import Callable

from .i18n import N_

FIELD_LABELS = {
    "name": N_("name"),
    "title": N_("title"),
    "description": N_("description"),
    "language": N_("language"),
    "auto_join": N_("joins activities by itself"),
    "photo_url": N_("photo"),
    "username": N_("username"),
    "role": N_("role"),
    "password_hash": N_("password"),
    "senior_id": N_("senior"),
    "relation": N_("relation"),
    "trusted": N_("trusted"),
    "auto_answer": N_("answers by itself"),
    "invite_version": N_("invite link"),
    "position": N_("order"),
    "credential_hash": N_("kiosk sign-in"),
    "paired_at": N_("pairing"),
    "revoked": N_("blocked"),
    "last_selftest": N_("self-test"),
    "host_ids": N_("hosts"),
    "slots": N_("times"),
    "enrolled": N_("participants"),
    "capacity": N_("places"),
    "guests_allowed": N_("guests welcome"),
    "started_at": N_("started now"),
}
# Bookkeeping, not something a coordinator changed.
HIDDEN_FIELDS = frozenset({"id", "kind", "last_seen"})
# A field this table does not know yet is shown as this, never by its name.
OTHER_FIELD = N_("other details")
# Actors that are not accounts: `verzilvering admin` on the server.
ACTOR_LABELS = {"cli": N_("System administration (on the server)")}
UNKNOWN_ACTOR = N_("someone no longer in the system")


def changed_details(fields: list[str], action: str, gettext: Callable[[str], str]) -> str:
    """The changed fields as the coordinator's words, or "—" when listing them says nothing
    (a record created or deleted: all of it)."""
    if action != "update":
        return "—"
    labels: list[str] = []
    for name in fields:
        if name in HIDDEN_FIELDS:
            continue
        label = gettext(FIELD_LABELS.get(name, OTHER_FIELD))
        if label not in labels:
            labels.append(label)
    return ", ".join(labels) or "—"


def actor_name(actor: str, names: dict[str, str], gettext: Callable[[str], str]) -> str:
    if actor in names:
        return names[actor]
    return gettext(ACTOR_LABELS.get(actor, UNKNOWN_ACTOR))
