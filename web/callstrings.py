"""The strings the call scripts (`web/static`) need, translated per request.

Used by the plain call page (`web/__init__.py`) and the family and host pages, which add
their own.
"""

from __future__ import annotations

from aiohttp import web

from .i18n import N_, gettext_for, language_of

# Strings for the call scripts: key → msgid (translated per request).
CALL_STRINGS = {
    "connecting": N_("Connecting…"),
    "connected": N_("Connected"),
    "waiting": N_("Connected. Waiting for the others…"),
    "reconnecting": N_("No connection — trying again"),
    "left": N_("You have left the group."),
    "removed": N_("The host removed you from the group."),
    "replaced": N_("You are now taking part in another window or on another device."),
    "link_invalid": N_("This link does not work (any more). Ask the host for a new link."),
    "room_full": N_("The group is full. Please try again later."),
    "forbidden": N_("This link does not allow that."),
    "unavailable": N_("This is not working right now. We are trying again."),
    "media_blocked": N_("Sound and picture cannot get through on this network, perhaps because of a firewall or VPN. We keep trying, less often. Try another network (for example mobile data instead of Wi-Fi), or ask the organisation for help."),
    "no_media": N_("Your camera and microphone do not work. You can still watch and listen."),
    "no_camera": N_("Your camera does not work. The others can still hear you."),
    "no_microphone": N_("Your microphone does not work. The others can still see you."),
    "muted_by_host": N_("The host turned your microphone off."),
    "mic_on": N_("Microphone is on"),
    "mic_off": N_("Microphone is off"),
    "camera_on": N_("Camera is on"),
    "camera_off": N_("Camera is off"),
    "muted_badge": N_("sound off"),
    "away_badge": N_("connection lost"),
    "lobby": N_("You are in the waiting room. The host will let you in shortly."),
    "denied": N_("The host did not let you in this time."),
    "ended": N_("The activity has ended. Thank you for taking part!"),
    "unmute_requested": N_("The host asks you to turn your microphone on. Press the microphone button when you are ready."),
    "spotlight_badge": N_("in the spotlight"),
    "music_badge": N_("music mode: the sound is not filtered"),
}


def call_strings(request: web.Request, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The strings the call scripts need, translated for this request."""
    _ = gettext_for(language_of(request))
    table = {**CALL_STRINGS, **(extra or {})}
    return {key: _(msgid) for key, msgid in table.items()}
