"""The durable directory: seniors, staff accounts, family contacts, kiosks and activities.

Typed records over the store's JSON collections, validated before anything is written,
and an audit entry for every change (who, what, which fields — never secret values).
Personal data is kept to what the service needs: a name, a language, an optional photo.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .schedule import ScheduleError, WeeklySlot
from .store import Store

LANGUAGES = ("nl", "en")
STAFF_ROLES = ("coordinator", "volunteer")
MAX_NAME = 80
MAX_TEXT = 2000
# A contact's place in the senior's order (lower first); the same number: by name.
MAX_POSITION = 999
# Almere's districts (stadsdelen, with Oosterwold on its own), for a senior's record and
# the trends per district.
DISTRICTS = (
    "Almere Stad", "Almere Haven", "Almere Buiten", "Almere Poort", "Almere Hout", "Almere Pampus", "Oosterwold",
)
PHONE_CHARACTERS = set("0123456789+-() ")
# Fields whose values never reach the audit log.
SECRET_FIELDS = {"password_hash", "credential_hash"}


class DirectoryError(ValueError):
    """Invalid input for a directory record; nothing was written."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _name(value: Any, field_name: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise DirectoryError(field_name, "Fill in a name.")
    value = " ".join(value.split())
    if len(value) > MAX_NAME:
        raise DirectoryError(field_name, f"A name can be at most {MAX_NAME} characters.")
    return value


def _text(value: Any, field_name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise DirectoryError(field_name, f"At most {MAX_TEXT} characters.")
    return value.strip()


def _language(value: Any) -> str:
    if value not in LANGUAGES:
        raise DirectoryError("language", "Choose Nederlands (nl) or English (en).")
    return value


def _bool(value: Any, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise DirectoryError(field_name, "Must be yes or no.")
    return value


def _phone(value: Any) -> str:
    value = " ".join(str(value or "").split())
    digits = sum(ch.isdigit() for ch in value)
    if value and (not set(value) <= PHONE_CHARACTERS or not 6 <= digits <= 15):
        raise DirectoryError("phone", "Fill in a phone number of 6 to 15 digits, or leave it empty.")
    return value


@dataclass
class Senior:
    id: str
    name: str
    language: str = "nl"
    auto_join: bool = False
    photo_url: str = ""
    kind: str = "senior"
    # Optional, for the coordinator's reach-out list.
    phone: str = ""
    # One of DISTRICTS, or empty: for the trends per district.
    district: str = ""
    # False: counted in figures, but left out of every named overview and export.
    named_overviews: bool = True

    def validate(self) -> None:
        self.name = _name(self.name)
        self.language = _language(self.language)
        self.auto_join = _bool(self.auto_join, "auto_join")
        self.photo_url = _text(self.photo_url, "photo_url")
        self.phone = _phone(self.phone)
        if self.district not in ("", *DISTRICTS):
            raise DirectoryError("district", "Choose a district from the list.")
        self.named_overviews = _bool(self.named_overviews, "named_overviews")


@dataclass
class Account:
    """A coordinator or volunteer who logs in to the web pages."""

    id: str
    name: str
    username: str
    role: str
    password_hash: str = ""
    language: str = "nl"
    kind: str = "staff"
    # Switched off: cannot log in, and every session and token of the account ends.
    disabled: bool = False

    def validate(self) -> None:
        self.name = _name(self.name)
        self.disabled = _bool(self.disabled, "disabled")
        if self.role not in STAFF_ROLES:
            raise DirectoryError("role", "Role must be coordinator or volunteer.")
        if not isinstance(self.username, str) or not 3 <= len(self.username.strip()) <= 64:
            raise DirectoryError("username", "A username has 3 to 64 characters.")
        self.username = self.username.strip().lower()
        self.language = _language(self.language)


@dataclass
class Contact:
    """A family member or friend of one senior. Family never has an account."""

    id: str
    senior_id: str
    name: str
    relation: str = ""
    trusted: bool = False
    auto_answer: bool = False
    photo_url: str = ""
    # Bumping this invalidates every invite link issued before.
    invite_version: int = 1
    # The coordinator's order on the kiosk's home screen: lower first, then by name.
    position: int = 0

    def validate(self) -> None:
        self.name = _name(self.name)
        self.relation = _text(self.relation, "relation")[:MAX_NAME]
        self.trusted = _bool(self.trusted, "trusted")
        self.auto_answer = _bool(self.auto_answer, "auto_answer")
        if self.auto_answer and not self.trusted:
            raise DirectoryError("auto_answer", "Only a trusted contact may be answered automatically.")
        self.photo_url = _text(self.photo_url, "photo_url")
        if isinstance(self.position, bool) or not isinstance(self.position, int) or not 0 <= self.position <= MAX_POSITION:
            raise DirectoryError("position", f"The order is a whole number from 0 to {MAX_POSITION}.")

    @property
    def order_key(self) -> tuple[int, str, str]:
        return (self.position, self.name.casefold(), self.id)


@dataclass
class Kiosk:
    id: str
    senior_id: str
    name: str = ""
    credential_hash: str = ""
    paired_at: float = 0.0
    revoked: bool = False
    last_seen: float = 0.0
    last_selftest: dict[str, Any] | None = None
    # What the kiosk said it runs at its last connection (`hello` device.version).
    software_version: str = ""

    def validate(self) -> None:
        self.name = _text(self.name, "name")[:MAX_NAME]
        self.revoked = _bool(self.revoked, "revoked")


@dataclass
class Activity:
    id: str
    title: str
    description: str = ""
    host_ids: list[str] = field(default_factory=list)
    # Weekly slots in Europe/Amsterdam: [{"weekday": "tuesday", "start": "10:00", "duration_min": 60}]
    slots: list[dict[str, Any]] = field(default_factory=list)
    enrolled: list[str] = field(default_factory=list)
    capacity: int = 20
    guests_allowed: bool = False
    # When a host last started it now (epoch seconds; 0: never): kiosks show it as running.
    started_at: float = 0.0

    def validate(self) -> None:
        self.title = _name(self.title, "title")
        if not isinstance(self.started_at, (int, float)) or self.started_at < 0:
            raise DirectoryError("started_at", "The start time must be a time.")
        self.description = _text(self.description, "description")
        if not isinstance(self.capacity, int) or not 1 <= self.capacity <= 100:
            raise DirectoryError("capacity", "Capacity must be between 1 and 100.")
        if len(self.enrolled) > self.capacity:
            raise DirectoryError("enrolled", "More seniors enrolled than the capacity allows.")
        self.guests_allowed = _bool(self.guests_allowed, "guests_allowed")
        parsed = []
        for slot in self.slots:
            try:
                parsed.append(
                    WeeklySlot.parse(slot.get("weekday", ""), slot.get("start", ""), slot.get("duration_min", 0)).to_dict()
                )
            except ScheduleError as exc:
                raise DirectoryError(f"slots.{exc.field}", str(exc)) from None
            except AttributeError:
                raise DirectoryError("slots", "Each time slot needs a weekday, a start and a duration.") from None
        self.slots = parsed

    @property
    def weekly_slots(self) -> list[WeeklySlot]:
        return [WeeklySlot.parse(s["weekday"], s["start"], s["duration_min"]) for s in self.slots]


Record = TypeVar("Record", Senior, Account, Contact, Kiosk, Activity)

_COLLECTIONS: dict[type, str] = {
    Senior: "people",
    Account: "people",
    Contact: "contacts",
    Kiosk: "kiosks",
    Activity: "activities",
}


def hash_secret(secret: str) -> str:
    """For high-entropy machine secrets (kiosk credentials); passwords use argon2/bcrypt."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, hashed: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), hashed)


class Directory:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, cls: type[Record], record_id: str) -> Record | None:
        data = await self.store.get_record(_COLLECTIONS[cls], record_id)
        if data is None or not _is(cls, data):
            return None
        return _from_dict(cls, data)

    async def get_many(self, cls: type[Record], record_ids: list[str]) -> list[Record]:
        """The records that exist, in the order asked."""
        found = await self.store.get_records(_COLLECTIONS[cls], record_ids)
        return [_from_dict(cls, data) for data in found if data is not None and _is(cls, data)]

    async def list(self, cls: type[Record]) -> list[Record]:
        return [
            _from_dict(cls, data)
            for data in await self.store.list_records(_COLLECTIONS[cls])
            if _is(cls, data)
        ]

    async def put(self, record: Record, *, actor: str) -> Record:
        """Validates and stores the record; audits which fields changed."""
        record.validate()
        kind = _COLLECTIONS[type(record)]
        before = await self.store.get_record(kind, record.id)
        after = dataclasses.asdict(record)
        await self.store.put_record(kind, record.id, after)
        changed = sorted(k for k in after if before is None or before.get(k) != after.get(k))
        await self.audit(actor, "create" if before is None else "update", kind, record.id, changed)
        return record

    async def delete(self, cls: type[Record], record_id: str, *, actor: str) -> bool:
        kind = _COLLECTIONS[cls]
        existed = await self.store.delete_record(kind, record_id)
        if existed:
            if cls is Contact:
                # The senior's missed calls to them go with the person.
                await self.store.delete_record("missed_calls", record_id)
            await self.audit(actor, "delete", kind, record_id, [])
        return existed

    async def audit(
        self, actor: str, action: str, kind: str, record_id: str, fields: list[str], *, note: str = ""
    ) -> None:
        at = time.time()
        entry_id = f"{at:017.6f}-{secrets.token_hex(3)}"
        entry = {
            "id": entry_id,
            "at": at,
            "actor": actor,
            "action": action,
            "kind": kind,
            "record_id": record_id,
            "fields": fields,
        }
        if note:
            # A coordinator's own words (a phone call's note); never a secret.
            entry["note"] = note[:MAX_TEXT]
        await self.store.put_record("audit", entry_id, entry)

    async def audit_log(self, limit: int = 200) -> list[dict[str, Any]]:
        entries = await self.store.list_records("audit")
        return sorted(entries, key=lambda e: e["at"], reverse=True)[:limit]

    # --- lookups the service needs ----------------------------------------------------

    async def contacts_of(self, senior_id: str) -> list[Contact]:
        """In the coordinator's order: by position, then by name."""
        return sorted((c for c in await self.list(Contact) if c.senior_id == senior_id), key=lambda c: c.order_key)

    async def kiosks_of(self, senior_id: str) -> list[Kiosk]:
        return [k for k in await self.list(Kiosk) if k.senior_id == senior_id and not k.revoked]

    async def activities_of(self, senior_id: str) -> list[Activity]:
        return [a for a in await self.list(Activity) if senior_id in a.enrolled]

    async def account_by_username(self, username: str) -> Account | None:
        username = username.strip().lower()
        return next((a for a in await self.list(Account) if a.username == username), None)


def _is(cls: type, data: dict[str, Any]) -> bool:
    if cls is Senior:
        return data.get("kind") == "senior"
    if cls is Account:
        return data.get("kind") == "staff"
    return True


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _from_dict(cls: type[Record], data: dict[str, Any]) -> Record:
    # Field names looked up once per class: listing 2,000 seniors spent most of its time
    # in dataclasses.fields().
    names = _field_names(cls)
    return cls(**{k: v for k, v in data.items() if k in names})
