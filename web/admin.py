"""Coordinator pages under /admin: seniors, contacts, kiosks, staff accounts, activities, audit.

Every route is for coordinators only (`auth.require("coordinator")`); volunteers get 403
and visitors without a session go to the login page. Forms post back to their own URL;
bad input re-renders the form with a message per field (400) and writes nothing. Every
write goes through `server.directory.Directory`, which validates and audits it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Generic

from aiohttp import web

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, SIGNALING_KEY, STORE_KEY
from server.directory import (
    DISTRICTS,
    LANGUAGES,
    Account,
    Activity,
    Contact,
    Directory,
    DirectoryError,
    Kiosk,
    Record,
    Senior,
    new_id,
)
from server.engagement import forget_senior
from server.forwarded import TrustedProxies
from server.invites import issue_invite, named_secret
from server.pairing import confirm_pairing
from server.schedule import WEEKDAYS

from . import photos
from .auth import STAFF_SESSIONS_KEY, Handler, current_account, form, hash_password, require
from .i18n import N_, gettext_for, language_of
from .password_policy import check_new_password
from .rendering import error_page, needs, redirect, render
from .roompages import activity_row

coordinator = require("coordinator")

SLOT_ROWS = 3
# The form fields that are a record's fields of the same name, as they are.
SENIOR_FIELDS = ("name", "language", "auto_join", "phone", "district", "named_overviews")
CONTACT_FIELDS = ("name", "relation", "trusted", "auto_answer")
ACCOUNT_FIELDS = ("name", "username", "role", "language", "disabled")
# Messages server/directory.py and server/schedule.py raise, so they can be translated.
DIRECTORY_MESSAGES = (
    N_("Fill in a name."),
    N_("A name can be at most 80 characters."),
    N_("At most 2000 characters."),
    N_("Choose Nederlands (nl) or English (en)."),
    N_("Must be yes or no."),
    N_("Role must be coordinator or volunteer."),
    N_("A username has 3 to 64 characters."),
    N_("Only a trusted contact may be answered automatically."),
    N_("Capacity must be between 1 and 100."),
    N_("More seniors enrolled than the capacity allows."),
    N_("Each time slot needs a weekday, a start and a duration."),
    N_("Duration must be between 5 and 480 minutes."),
    N_("The order is a whole number from 0 to 999."),
    N_("Fill in a phone number of 6 to 15 digits, or leave it empty."),
    N_("Choose a district from the list."),
)
WEEKDAY_LABELS = {
    "monday": N_("Monday"),
    "tuesday": N_("Tuesday"),
    "wednesday": N_("Wednesday"),
    "thursday": N_("Thursday"),
    "friday": N_("Friday"),
    "saturday": N_("Saturday"),
    "sunday": N_("Sunday"),
}
ROLE_LABELS = {"coordinator": N_("Coordinator"), "volunteer": N_("Volunteer (host)")}
AUDIT_ACTIONS = {
    "create": N_("created"),
    "update": N_("changed"),
    "delete": N_("deleted"),
    "start": N_("started"),
    "selftest": N_("asked for a self-test of"),
    "called": N_("phoned"),
    "export": N_("exported named attendance"),
}
AUDIT_KINDS = {
    "people": N_("person"),
    "contacts": N_("contact"),
    "kiosks": N_("kiosk"),
    "activities": N_("activity"),
}


def _dir(request: web.Request) -> Directory:
    return request.app[DIRECTORY_KEY]


def _t(request: web.Request):  # type: ignore[no-untyped-def]
    return gettext_for(language_of(request))


def _actor(request: web.Request) -> str:
    return current_account(request).id


def _flash(request: web.Request, msgid: str) -> None:
    request["session"]["flash"] = msgid


def _checked(data: Any, name: str) -> bool:
    return data.get(name) in ("on", "1", "yes", "true")


def _field_error(request: web.Request, exc: DirectoryError) -> dict[str, str]:
    return {exc.field: _t(request)(exc.message)}


async def _not_found(request: web.Request) -> web.Response:
    return error_page(
        request, 404, N_("Not found"), N_("This page does not exist (any more). Go back to the overview.")
    )


def _form_values(record: Record, fields: tuple[str, ...]) -> dict[str, Any]:
    """What a record's form shows: the record's value of each field (a blank record's for a
    new one)."""
    return {name: getattr(record, name) for name in fields}


def _form_page(
    request: web.Request, template: str, values: dict[str, Any], errors: dict[str, str] | None, **context: Any
) -> web.Response:
    """A page with a form showing `values`; with `errors` (a message per field) it is the
    form sent back as it came (400)."""
    return render(request, template, status=400 if errors else 200, values=values, errors=errors or {}, **context)


def _public_base(request: web.Request) -> str:
    settings = request.app[SETTINGS_KEY]
    if settings.public_url:
        return settings.public_url.rstrip("/")
    # Behind nginx without a public URL: the scheme the browser used, as the trusted proxy says.
    return f"{TrustedProxies(settings.trusted_proxies).scheme(request)}://{request.host}"


# --- one record's pages -----------------------------------------------------------------------

RecordPage = Callable[[web.Request, Record], Awaitable[web.Response]]


def record_page(kind: type[Record], key: str) -> Callable[[RecordPage[Record]], Handler]:
    """A coordinator page about the record the URL's `key` names; a missing one is 404."""

    async def find(request: web.Request) -> Record | web.Response:
        record = await _dir(request).get(kind, request.match_info[key])
        return record if record is not None else await _not_found(request)

    return lambda page: coordinator(needs(find)(page))


NewOrRecordPage = Callable[[web.Request, Record | None], Awaitable[web.Response]]


def new_or_record_page(kind: type[Record], key: str) -> Callable[[NewOrRecordPage[Record]], Handler]:
    """Like `record_page`, for a form that also makes a new record: its `…/new` URL has no
    `key`, and the page gets None."""

    async def find(request: web.Request) -> Record | None | web.Response:
        record_id = request.match_info.get(key)
        record = await _dir(request).get(kind, record_id) if record_id else None
        return await _not_found(request) if record_id and record is None else record

    return lambda page: coordinator(needs(find)(page))


@dataclass(frozen=True)
class Removal(Generic[Record]):
    """One record type's removal: `GET {base}/{id}/{verb}` asks "Remove …?" (admin/confirm.html),
    `POST` to the same URL does it. The message ids take the record's name as %(name)s."""

    kind: type[Record]
    base: str  # "/admin/seniors": the list, and with the id the record's own page
    key: str  # the URL's placeholder for the id
    body: str
    # Removes the record (and what hangs on it); returns where to go next.
    remove: Callable[[web.Request, Record], Awaitable[str]]
    heading: str = N_("Remove %(name)s?")
    button: str = N_("Yes, remove %(name)s")
    name: Callable[[Record], str] = lambda record: record.name
    verb: str = "delete"
    done: str = N_("Removed.")
    # Kiosks have no page of their own: "No, go back" leads to the list.
    back_to_list: bool = False
    # Why this one may not go (400 on both pages), e.g. one's own account.
    refusal: Callable[[web.Request, Record], str | None] = lambda request, record: None
    # Whether there is anything to confirm (a switched-off kiosk: 404). The removal itself
    # stays harmless when repeated.
    confirmable: Callable[[Record], bool] = lambda record: True

    def add_routes(self, router: web.UrlDispatcher) -> None:
        path = f"{self.base}/{{{self.key}}}/{self.verb}"
        router.add_get(path, record_page(self.kind, self.key)(self.confirm))
        router.add_post(path, record_page(self.kind, self.key)(self.removed))

    async def confirm(self, request: web.Request, record: Record) -> web.Response:
        if not self.confirmable(record):
            return await _not_found(request)
        refusal = self.refusal(request, record)
        if refusal:
            return error_page(request, 400, N_("Not possible"), refusal)
        _ = _t(request)
        name = self.name(record)
        return render(
            request,
            "admin/confirm.html",
            heading=_(self.heading, name=name),
            body=_(self.body, name=name),
            action=f"{self.base}/{record.id}/{self.verb}",
            button=_(self.button, name=name),
            back=self.base if self.back_to_list else f"{self.base}/{record.id}",
        )

    async def removed(self, request: web.Request, record: Record) -> web.Response:
        refusal = self.refusal(request, record)
        if refusal:
            return error_page(request, 400, N_("Not possible"), refusal)
        then = await self.remove(request, record)
        _flash(request, self.done)
        return redirect(then)


def add_form_routes(
    router: web.UrlDispatcher,
    removal: Removal[Record],
    new_url: str,
    show: NewOrRecordPage[Record],
    save: NewOrRecordPage[Record],
) -> None:
    """A record type's form, shown (`show`) and posted back (`save`) at its own URL: empty at
    `new_url`, where the pages get None, and filled at `{base}/{id}`; then its removal."""
    pages = new_or_record_page(removal.kind, removal.key)
    for url in (new_url, f"{removal.base}/{{{removal.key}}}"):
        router.add_get(url, pages(show))
        router.add_post(url, pages(save))
    removal.add_routes(router)


# --- dashboard ------------------------------------------------------------------------------


@coordinator
async def dashboard(request: web.Request) -> web.Response:
    directory = _dir(request)
    store = request.app[STORE_KEY]
    kiosks = [k for k in await directory.list(Kiosk) if not k.revoked]
    online = 0
    for kiosk in kiosks:
        online += await store.is_present(f"kiosk:{kiosk.id}")
    return render(
        request,
        "admin/dashboard.html",
        counts={
            "seniors": len(await directory.list(Senior)),
            "kiosks": len(kiosks),
            "online": online,
            "accounts": len(await directory.list(Account)),
            "activities": len(await directory.list(Activity)),
        },
    )


# --- seniors ---------------------------------------------------------------------------------


@coordinator
async def seniors(request: web.Request) -> web.Response:
    people = sorted(await _dir(request).list(Senior), key=lambda s: s.name.lower())
    return render(request, "admin/seniors.html", seniors=people)


async def _senior_form(request: web.Request, senior: Senior | None, *, errors: dict[str, str] | None = None,
                       values: dict[str, Any] | None = None) -> web.Response:
    return _form_page(
        request,
        "admin/senior.html",
        values or _form_values(senior or Senior(id="", name=""), SENIOR_FIELDS),
        errors,
        senior=senior,
        languages=LANGUAGES,
        districts=DISTRICTS,
        **(await _senior_details(request, senior) if senior else {}),
    )


async def _senior_details(request: web.Request, senior: Senior) -> dict[str, Any]:
    directory = _dir(request)
    store = request.app[STORE_KEY]
    kiosks = []
    for kiosk in await directory.kiosks_of(senior.id):
        kiosks.append({"kiosk": kiosk, "online": await store.is_present(f"kiosk:{kiosk.id}")})
    return {
        # As the kiosk shows them: the coordinator's order, then by name.
        "contacts": await directory.contacts_of(senior.id),
        "kiosks": kiosks,
        "activities": await directory.activities_of(senior.id),
    }


async def _senior_save(request: web.Request, existing: Senior | None) -> web.Response:
    data = form(request)
    values = {
        "name": str(data.get("name", "")),
        "language": str(data.get("language", "")),
        "auto_join": _checked(data, "auto_join"),
        "phone": str(data.get("phone", "")),
        "district": str(data.get("district", "")),
        "named_overviews": _checked(data, "named_overviews"),
    }
    senior = replace(existing, **values) if existing else Senior(id=new_id("senior"), **values)
    new_photo, errors = await _validated_with_photo(request, data, senior.validate)
    if errors:
        return await _senior_form(request, existing, errors=errors, values=values)
    await _put_with_photo(request, senior, data, new_photo, senior.id)
    return redirect(f"/admin/seniors/{senior.id}")


async def _validated_with_photo(
    request: web.Request, data: Any, validate: Callable[[], None]
) -> tuple[str | None, dict[str, str]]:
    """Checks a senior's or contact's form, then keeps its uploaded photo: (the new photo's
    URL or None, an error per field)."""
    try:
        validate()
        return await _photo_from(request, data), {}
    except DirectoryError as exc:
        return None, _field_error(request, exc)
    except photos.PhotoError as exc:
        return None, {"photo": _t(request)(exc.message)}


async def _put_with_photo(
    request: web.Request, record: Senior | Contact, data: Any, new_photo: str | None, senior_id: str
) -> None:
    """Saves a senior or contact with their new (or removed) photo, deletes the photo it
    replaced, and tells the senior's kiosks."""
    old_photo = record.photo_url
    if new_photo:
        record.photo_url = new_photo
    elif _checked(data, "remove_photo"):
        record.photo_url = ""
    await _dir(request).put(record, actor=_actor(request))
    if old_photo and old_photo != record.photo_url:
        await photos.delete_photo(request.app[STORE_KEY], old_photo)
    await _tell_kiosks(request, senior_id)
    _flash(request, N_("Saved."))


async def _photo_from(request: web.Request, data: Any) -> str | None:
    upload = data.get("photo")
    if not isinstance(upload, tuple) or not upload[2]:
        return None
    settings = request.app[SETTINGS_KEY]
    return await photos.save_photo(request.app[STORE_KEY], upload, settings.photo_max_bytes, settings.photo_max_pixels)


async def _tell_kiosks(request: web.Request, senior_id: str) -> None:
    """Paired kiosks re-fetch their home screen after a change (best effort)."""
    signaling = request.app.get(SIGNALING_KEY)
    devices = getattr(signaling, "devices", None)
    if devices is not None and hasattr(devices, "directory_changed"):
        await devices.directory_changed(senior_id)


async def _revoke(request: web.Request, participant_id: str) -> None:
    """Every join token issued so far to this person (staff account, contact, senior) is
    refused, on every node, and their open sessions are closed (signaling/revocation.py)."""
    await request.app[SIGNALING_KEY].revoke_participant(participant_id)


async def _remove_senior(request: web.Request, senior: Senior) -> str:
    directory = _dir(request)
    store = request.app[STORE_KEY]
    actor = _actor(request)
    for kiosk in await directory.kiosks_of(senior.id):
        kiosk.revoked = True
        await directory.put(kiosk, actor=actor)
        await request.app[SIGNALING_KEY].revoke_kiosk(kiosk.id)
    for contact in await directory.contacts_of(senior.id):
        await directory.delete(Contact, contact.id, actor=actor)
        await photos.delete_photo(store, contact.photo_url)
        await _revoke(request, contact.id)
    for activity in await directory.activities_of(senior.id):
        activity.enrolled = [s for s in activity.enrolled if s != senior.id]
        await directory.put(activity, actor=actor)
    await directory.delete(Senior, senior.id, actor=actor)
    await photos.delete_photo(store, senior.photo_url)
    await _revoke(request, senior.id)
    await forget_senior(store, request.app[SETTINGS_KEY], senior.id)
    return "/admin/seniors"


SENIOR_REMOVAL = Removal(
    Senior,
    "/admin/seniors",
    "senior_id",
    body=N_(
        "This removes %(name)s, their family contacts and their place in activities, and switches off their kiosks. It cannot be undone."  # noqa: E501
    ),
    remove=_remove_senior,
)


# --- family contacts ------------------------------------------------------------------------


def _contact_form(request: web.Request, senior: Senior, contact: Contact | None, *,
                  errors: dict[str, str] | None = None, values: dict[str, Any] | None = None) -> web.Response:
    shown = contact or Contact(id="", senior_id=senior.id, name="")
    invite_url = None
    if contact is not None:
        secret = named_secret(request.app[SETTINGS_KEY], "invite")
        ttl = request.app[SETTINGS_KEY].invite_ttl_days * 24 * 3600
        invite_url = f"{_public_base(request)}/family/{issue_invite(secret, contact, ttl_s=ttl)}"
    return _form_page(
        request,
        "admin/contact.html",
        values or {**_form_values(shown, CONTACT_FIELDS), "position": str(shown.position)},
        errors,
        senior=senior,
        contact=contact,
        invite_url=invite_url,
        invite_days=request.app[SETTINGS_KEY].invite_ttl_days,
    )


async def _senior_of(request: web.Request, contact: Contact | None) -> Senior | None:
    # A new contact's URL names their senior.
    return await _dir(request).get(Senior, contact.senior_id if contact else request.match_info["senior_id"])


async def _contact_page(request: web.Request, contact: Contact | None) -> web.Response:
    senior = await _senior_of(request, contact)
    if senior is None:
        return await _not_found(request)
    return _contact_form(request, senior, contact)


async def _contact_save(request: web.Request, existing: Contact | None) -> web.Response:
    senior = await _senior_of(request, existing)
    if senior is None:
        return await _not_found(request)
    data = form(request)
    values = {
        "name": str(data.get("name", "")),
        "relation": str(data.get("relation", "")),
        "trusted": _checked(data, "trusted"),
        "auto_answer": _checked(data, "auto_answer"),
        # Not sent at all (an older form): keep what it was; left empty: no particular place.
        "position": str(data["position"]).strip() if "position" in data else str(existing.position if existing else 0),
    }
    fields = {name: values[name] for name in CONTACT_FIELDS}
    contact = replace(existing, **fields) if existing else Contact(id=new_id("contact"), senior_id=senior.id, **fields)
    position_raw = values["position"] or "0"

    def validate() -> None:
        if not (position_raw.isascii() and position_raw.isdigit()):
            raise DirectoryError("position", "The order is a whole number from 0 to 999.")
        contact.position = int(position_raw)
        contact.validate()

    new_photo, errors = await _validated_with_photo(request, data, validate)
    if errors:
        return _contact_form(request, senior, existing, errors=errors, values=values)
    await _put_with_photo(request, contact, data, new_photo, senior.id)
    return redirect(f"/admin/contacts/{contact.id}")


@record_page(Contact, "contact_id")
async def contact_new_invite(request: web.Request, contact: Contact) -> web.Response:
    contact.invite_version += 1
    await _dir(request).put(contact, actor=_actor(request))
    # The old link's activity and call tokens go with it.
    await _revoke(request, contact.id)
    _flash(request, N_("A new invite link is ready. The old link no longer works."))
    return redirect(f"/admin/contacts/{contact.id}#invite")


async def _remove_contact(request: web.Request, contact: Contact) -> str:
    await _dir(request).delete(Contact, contact.id, actor=_actor(request))
    await photos.delete_photo(request.app[STORE_KEY], contact.photo_url)
    await _revoke(request, contact.id)
    await _tell_kiosks(request, contact.senior_id)
    return f"/admin/seniors/{contact.senior_id}"


CONTACT_REMOVAL = Removal(
    Contact,
    "/admin/contacts",
    "contact_id",
    body=N_("%(name)s can no longer call, and their invite link stops working."),
    remove=_remove_contact,
)


# --- kiosks ---------------------------------------------------------------------------------


SELFTEST_TITLES = {
    "camera": N_("Camera"),
    "microphone": N_("Microphone"),
    "speaker": N_("Speaker"),
    "echo_cancel": N_("Echo cancellation"),
    "server": N_("Connection to Verzilvering"),
    "turn": N_("Backup route for sound and picture (TURN)"),
}
SELFTEST_STATUS = {
    "ok": N_("fine"),
    "warning": N_("attention"),
    "failed": N_("not working"),
    "not_available": N_("cannot be checked"),
    "skipped": N_("skipped"),
}
SELFTEST_ICONS = {"ok": "✔", "warning": "!", "failed": "✖"}


def _selftest_summary(record: dict[str, Any] | None, lang: str) -> dict[str, Any] | None:
    """What the kiosks page shows of the last self-test.

    The kiosk stores {"at": unix time, "result": {...}} where the result is the object of
    `verzilvering-kiosk selftest` (kiosk_client/selftest.py): `ok` and `checks` {name:
    {status, message {nl, en}}}. Anything unexpected is shown as far as it makes sense.
    """
    if not isinstance(record, dict):
        return None
    # Names and statuses come from the kiosk: only known ones are translated, anything else
    # is shown as plain (escaped) text and never reaches the translation function.
    _ = gettext_for(lang)
    result = record.get("result") if isinstance(record.get("result"), dict) else record
    at = record.get("at")
    ok = result.get("ok")
    details = []
    checks = result.get("checks")
    if isinstance(checks, dict):
        for name, check in list(checks.items())[:12]:
            if not isinstance(check, dict):
                continue
            status = check.get("status")
            message = check.get("message")
            text = message.get(lang, "") if isinstance(message, dict) else str(message or "")
            title = SELFTEST_TITLES.get(name)
            status_text = SELFTEST_STATUS.get(status) if isinstance(status, str) else None
            details.append(
                {
                    "title": _(title) if title else str(name)[:80],
                    "status": _(status_text) if status_text else None,
                    "icon": SELFTEST_ICONS.get(status, "–") if isinstance(status, str) else "–",
                    "message": str(text)[:300],
                }
            )
    return {
        "ok": ok if isinstance(ok, bool) else None,
        "at": at if isinstance(at, (int, float)) and not isinstance(at, bool) else None,
        "details": details,
    }


@coordinator
async def kiosks(request: web.Request) -> web.Response:
    return await _kiosks_page(request)


async def _kiosks_page(request: web.Request, *, errors: dict[str, str] | None = None,
                       values: dict[str, str] | None = None) -> web.Response:
    directory = _dir(request)
    store = request.app[STORE_KEY]
    people = {s.id: s for s in await directory.list(Senior)}
    rows = []
    for kiosk in sorted(await directory.list(Kiosk), key=lambda k: (k.revoked, -k.paired_at)):
        rows.append(
            {
                "kiosk": kiosk,
                "senior": people.get(kiosk.senior_id),
                "online": (not kiosk.revoked) and await store.is_present(f"kiosk:{kiosk.id}"),
                "selftest": _selftest_summary(kiosk.last_selftest, language_of(request)),
            }
        )
    return _form_page(
        request,
        "admin/kiosks.html",
        values or {"code": "", "senior_id": request.query.get("senior", "")},
        errors,
        rows=rows,
        seniors=sorted(people.values(), key=lambda s: s.name.lower()),
    )


@coordinator
async def kiosk_pair(request: web.Request) -> web.Response:
    data = form(request)
    values = {"code": str(data.get("code", "")).strip()[:20], "senior_id": str(data.get("senior_id", ""))}
    try:
        kiosk = await confirm_pairing(
            request.app[STORE_KEY], _dir(request), values["code"], values["senior_id"], _actor(request)
        )
    except DirectoryError as exc:
        if exc.field in ("senior_id", "senior"):
            message = N_("Choose the senior this kiosk belongs to.")
            field = "senior_id"
        else:
            message = N_("No kiosk shows this code. Check the 6 digits on the kiosk screen; after 15 minutes the kiosk shows a new code.")
            field = "code"
        return await _kiosks_page(request, errors={field: _t(request)(message)}, values=values)
    await _tell_kiosks(request, kiosk.senior_id)
    _flash(request, N_("The kiosk is paired. It connects within a few seconds."))
    return redirect("/admin/kiosks")


@record_page(Kiosk, "kiosk_id")
async def kiosk_selftest(request: web.Request, kiosk: Kiosk) -> web.Response:
    if kiosk.revoked:
        return await _not_found(request)
    sent = await request.app[SIGNALING_KEY].request_selftest(kiosk.id)
    if sent:
        await _dir(request).audit(_actor(request), "selftest", "kiosks", kiosk.id, [])
        _flash(request, N_("Self-test requested. The result appears here within a minute; reload the page."))
    else:
        _flash(request, N_("The kiosk is offline, so it cannot run a self-test now."))
    return redirect("/admin/kiosks")


async def _switch_off_kiosk(request: web.Request, kiosk: Kiosk) -> str:
    if not kiosk.revoked:
        kiosk.revoked = True
        await _dir(request).put(kiosk, actor=_actor(request))
        await request.app[SIGNALING_KEY].revoke_kiosk(kiosk.id)
    return "/admin/kiosks"


KIOSK_REMOVAL = Removal(
    Kiosk,
    "/admin/kiosks",
    "kiosk_id",
    heading=N_("Switch off %(name)s?"),
    body=N_(
        "The kiosk disconnects at once and cannot connect again. To use it again, pair it anew with a new code."
    ),
    button=N_("Yes, switch this kiosk off"),
    remove=_switch_off_kiosk,
    name=lambda kiosk: kiosk.name or kiosk.id,
    verb="revoke",
    done=N_("The kiosk is switched off."),
    back_to_list=True,
    confirmable=lambda kiosk: not kiosk.revoked,
)


# --- staff accounts ---------------------------------------------------------------------------


@coordinator
async def accounts(request: web.Request) -> web.Response:
    people = sorted(await _dir(request).list(Account), key=lambda a: (a.role, a.name.lower()))
    return render(request, "admin/accounts.html", accounts=people, role_labels=ROLE_LABELS)


async def _account_form(request: web.Request, account: Account | None, *, errors: dict[str, str] | None = None,
                        values: dict[str, Any] | None = None) -> web.Response:
    return _form_page(
        request,
        "admin/account.html",
        values or _form_values(account or Account(id="", name="", username="", role="volunteer"), ACCOUNT_FIELDS),
        errors,
        edited=account,
        role_labels=ROLE_LABELS,
        languages=LANGUAGES,
    )


async def _account_save(request: web.Request, existing: Account | None) -> web.Response:
    directory = _dir(request)
    me = current_account(request)
    data = form(request)
    values = {
        "name": str(data.get("name", "")),
        "username": str(data.get("username", "")) if existing is None else existing.username,
        "role": str(data.get("role", "")),
        "language": str(data.get("language", "")),
        "disabled": _checked(data, "disabled"),
    }
    password = str(data.get("password", ""))
    _ = _t(request)
    account = replace(existing, **values) if existing else Account(id=new_id("staff"), **values)
    errors: dict[str, str] = {}
    try:
        account.validate()
    except DirectoryError as exc:
        errors = _field_error(request, exc)
    if not errors and existing is None:
        if await directory.account_by_username(account.username) is not None:
            errors = {"username": _("This username is taken. Choose another.")}
    if not errors and (existing is None or password):
        problem = check_new_password(password, username=account.username, name=account.name)
        if problem:
            errors = {"password": _(problem)}
    if not errors and existing is not None and existing.id == me.id and account.role != "coordinator":
        errors = {"role": _("You cannot take away your own coordinator role.")}
    if not errors and existing is not None and existing.id == me.id and account.disabled:
        errors = {"disabled": _("You cannot switch off your own account.")}
    if errors:
        return await _account_form(request, existing, errors=errors, values=values)
    if password:
        account.password_hash = await hash_password(password)
    await directory.put(account, actor=me.id)
    sessions = request.app[STAFF_SESSIONS_KEY]
    if account.disabled and (existing is None or not existing.disabled):
        await sessions.end_all(account.id)
        await _revoke(request, account.id)
    elif password and existing is not None:
        # A new password ends the account's other sessions; one's own stays.
        await sessions.end_all(account.id, keep=request["session"].get("sid") if existing.id == me.id else None)
    _flash(request, N_("Saved."))
    return redirect("/admin/accounts")


def _own_account(request: web.Request, account: Account) -> str | None:
    if account.id == current_account(request).id:
        return N_("You cannot remove your own account.")
    return None


async def _remove_account(request: web.Request, account: Account) -> str:
    directory = _dir(request)
    for activity in await directory.list(Activity):
        if account.id in activity.host_ids:
            activity.host_ids = [h for h in activity.host_ids if h != account.id]
            await directory.put(activity, actor=_actor(request))
    await directory.delete(Account, account.id, actor=_actor(request))
    await request.app[STAFF_SESSIONS_KEY].end_all(account.id)
    await _revoke(request, account.id)
    return "/admin/accounts"


ACCOUNT_REMOVAL = Removal(
    Account,
    "/admin/accounts",
    "account_id",
    body=N_("%(name)s can no longer log in."),
    remove=_remove_account,
    refusal=_own_account,
)


# --- activities -----------------------------------------------------------------------------


def _slot_rows(slots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [dict(s) for s in slots]
    while len(rows) < max(SLOT_ROWS, len(slots) + 1):
        rows.append({"weekday": "", "start": "", "duration_min": ""})
    return rows


async def _activity_form(request: web.Request, activity: Activity | None, *, errors: dict[str, str] | None = None,
                         values: dict[str, Any] | None = None) -> web.Response:
    directory = _dir(request)
    if values is None:
        source = activity or Activity(id="", title="")
        values = {
            "title": source.title,
            "description": source.description,
            "host_ids": list(source.host_ids),
            "enrolled": list(source.enrolled),
            "capacity": source.capacity,
            "guests_allowed": source.guests_allowed,
            "slots": _slot_rows(source.slots),
        }
    return _form_page(
        request,
        "admin/activity.html",
        values,
        errors,
        activity=activity,
        staff=sorted(await directory.list(Account), key=lambda a: a.name.lower()),
        seniors=sorted(await directory.list(Senior), key=lambda s: s.name.lower()),
        weekdays=WEEKDAYS,
        weekday_labels=WEEKDAY_LABELS,
    )


@coordinator
async def activities(request: web.Request) -> web.Response:
    directory = _dir(request)
    staff = {a.id: a for a in await directory.list(Account)}
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        {**activity_row(activity, now), "hosts": [staff[h].name for h in activity.host_ids if h in staff]}
        for activity in sorted(await directory.list(Activity), key=lambda a: a.title.lower())
    ]
    return render(request, "admin/activities.html", rows=rows, weekday_labels=WEEKDAY_LABELS)


async def _activity_save(request: web.Request, existing: Activity | None) -> web.Response:
    directory = _dir(request)
    _ = _t(request)
    data = form(request)
    staff_ids = {a.id for a in await directory.list(Account)}
    senior_ids = {s.id for s in await directory.list(Senior)}
    slots_in = []
    errors: dict[str, str] = {}
    row_count = min(int(data.get("slot_rows", SLOT_ROWS)) if str(data.get("slot_rows", "")).isdigit() else SLOT_ROWS, 14)
    for i in range(row_count):
        weekday = str(data.get(f"slot-{i}-weekday", ""))
        start = str(data.get(f"slot-{i}-start", "")).strip()
        duration = str(data.get(f"slot-{i}-duration", "")).strip()
        slots_in.append({"weekday": weekday, "start": start, "duration_min": duration})
        if not weekday and not start:
            continue
        if weekday not in WEEKDAYS:
            errors.setdefault(f"slot-{i}-weekday", _("Choose a day."))
        if not _valid_time(start):
            errors.setdefault(f"slot-{i}-start", _("Fill in a start time like 10:00."))
        if not duration.isdigit() or not 5 <= int(duration) <= 480:
            errors.setdefault(f"slot-{i}-duration", _("Duration must be between 5 and 480 minutes."))
    capacity_raw = str(data.get("capacity", "")).strip()
    values = {
        "title": str(data.get("title", "")),
        "description": str(data.get("description", "")),
        "host_ids": [h for h in data.getall("host_ids", []) if isinstance(h, str)],
        "enrolled": [s for s in data.getall("enrolled", []) if isinstance(s, str)],
        "capacity": capacity_raw,
        "guests_allowed": _checked(data, "guests_allowed"),
        "slots": slots_in,
    }
    if not set(values["host_ids"]) <= staff_ids:
        errors["host_ids"] = _("Choose hosts from the list.")
    if not set(values["enrolled"]) <= senior_ids:
        errors["enrolled"] = _("Choose seniors from the list.")
    if not capacity_raw.isdigit():
        errors["capacity"] = _("Capacity must be between 1 and 100.")
    if not errors:
        activity = replace(existing) if existing else Activity(id=new_id("activity"), title="")
        activity.title = values["title"]
        activity.description = values["description"]
        activity.host_ids = list(dict.fromkeys(values["host_ids"]))
        activity.enrolled = list(dict.fromkeys(values["enrolled"]))
        activity.capacity = int(capacity_raw)
        activity.guests_allowed = values["guests_allowed"]
        activity.slots = [
            {"weekday": s["weekday"], "start": s["start"], "duration_min": int(s["duration_min"])}
            for s in slots_in
            if s["weekday"]
        ]
        try:
            activity.validate()
        except DirectoryError as exc:
            field = exc.field if not exc.field.startswith("slots") else "slots"
            errors[field] = _(str(exc.message))
    if errors:
        return await _activity_form(request, existing, errors=errors, values=values)
    await directory.put(activity, actor=_actor(request))
    changed = set(activity.enrolled) | set(existing.enrolled if existing else [])
    for senior_id in changed:
        await _tell_kiosks(request, senior_id)
    _flash(request, N_("Saved."))
    return redirect("/admin/activities")


def _valid_time(value: str) -> bool:
    try:
        hours, minutes = value.split(":")
        return len(minutes) == 2 and 0 <= int(hours) <= 23 and 0 <= int(minutes) <= 59
    except ValueError:
        return False


async def _remove_activity(request: web.Request, activity: Activity) -> str:
    await _dir(request).delete(Activity, activity.id, actor=_actor(request))
    # Its join tokens are spent, and its sessions closed.
    await request.app[SIGNALING_KEY].end_room(activity.id)
    for senior_id in activity.enrolled:
        await _tell_kiosks(request, senior_id)
    return "/admin/activities"


ACTIVITY_REMOVAL = Removal(
    Activity,
    "/admin/activities",
    "activity_id",
    body=N_("The activity disappears from every kiosk and from the hosts' lists."),
    remove=_remove_activity,
    name=lambda activity: activity.title,
)


# --- audit log --------------------------------------------------------------------------------


@coordinator
async def audit(request: web.Request) -> web.Response:
    directory = _dir(request)
    names: dict[str, str] = {a.id: a.name for a in await directory.list(Account)}
    names.update({s.id: s.name for s in await directory.list(Senior)})
    names.update({c.id: c.name for c in await directory.list(Contact)})
    names.update({a.id: a.title for a in await directory.list(Activity)})
    names.update({k.id: k.name or k.id for k in await directory.list(Kiosk)})
    entries = await directory.audit_log(limit=300)
    return render(
        request,
        "admin/audit.html",
        entries=entries,
        names=names,
        actions=AUDIT_ACTIONS,
        kinds=AUDIT_KINDS,
    )


def setup(app: web.Application) -> None:
    r = app.router
    # "/admin" itself is "Vandaag" (web/engagement.py); the counts live one level down.
    r.add_get("/admin/overview", dashboard)
    r.add_get("/admin/seniors", seniors)
    add_form_routes(r, SENIOR_REMOVAL, "/admin/seniors/new", _senior_form, _senior_save)
    add_form_routes(r, CONTACT_REMOVAL, "/admin/seniors/{senior_id}/contacts/new", _contact_page, _contact_save)
    r.add_post("/admin/contacts/{contact_id}/new-invite", contact_new_invite)
    r.add_get("/admin/kiosks", kiosks)
    r.add_post("/admin/kiosks/pair", kiosk_pair)
    r.add_post("/admin/kiosks/{kiosk_id}/selftest", kiosk_selftest)
    KIOSK_REMOVAL.add_routes(r)
    r.add_get("/admin/accounts", accounts)
    add_form_routes(r, ACCOUNT_REMOVAL, "/admin/accounts/new", _account_form, _account_save)
    r.add_get("/admin/activities", activities)
    add_form_routes(r, ACTIVITY_REMOVAL, "/admin/activities/new", _activity_form, _activity_save)
    r.add_get("/admin/audit", audit)
