"""Every word the kiosk shows, in Dutch and English, and how it says times and durations.

Plain words only: the people reading these may never have used a computer. No technical
terms ("ICE", "server", "error 4001"), no abbreviations, whole sentences.
"""

from __future__ import annotations

import datetime as dt

LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "nl"

STRINGS: dict[str, dict[str, str]] = {
    "nl": {
        "pairing_title": "Welkom bij Verzilvering",
        "pairing_body": "Deze kiosk is nog niet klaar voor gebruik. Geef deze code aan de begeleider:",
        "pairing_qr": "Of scan dit plaatje met de telefoon",
        "pairing_expires": "De code blijft {minutes} minuten geldig. Daarna komt er vanzelf een nieuwe.",
        "pairing_fetching": "Een ogenblik, de code wordt opgehaald…",
        "pairing_done": "Klaar! Een ogenblik…",
        "connecting": "Verbinden…",
        "offline": "Geen verbinding — we proberen het opnieuw",
        "next_activity": "Volgende activiteit",
        "no_activity": "Er staat nu geen activiteit gepland.",
        "join": "Meedoen",
        "join_from": "Meedoen kan vanaf {time}",
        "today_at": "Vandaag om {time}",
        "tomorrow_at": "Morgen om {time}",
        "weekday_at": "{weekday} om {time}",
        "starts_in": "Begint over {duration}",
        "starts_now": "Begint zo",
        "running": "Tik op Meedoen om mee te doen.",
        "activity_now": "Nu bezig",
        "family": "Bellen met",
        "call": "Bellen",
        "volume_down": "Zachter",
        "volume_up": "Harder",
        "volume": "Geluid",
        "countdown_title": "{title} begint",
        "countdown_body": "Over {seconds} seconden doet u mee.",
        "not_now": "Niet nu",
        "invite_title": "We beginnen! Doet u mee?",
        "invite_body": "{title} begint nu.",
        "invite_body_host": "{title} begint nu. {host} nodigt u uit.",
        "invite_join": "Ja, ik doe mee",
        "incoming_title": "{name} belt u",
        "incoming_trusted_body": "Over {seconds} seconden ziet en hoort u elkaar.",
        "incoming_body": "Wilt u opnemen?",
        "answer": "Opnemen",
        "decline": "Niet opnemen",
        "missed_call": "Gemiste oproep van {name} om {time}",
        "missed_call_busy": "{name} belde om {time}, toen u bezig was",
        "call_back": "Terugbellen",
        "dismiss": "Gezien",
        "joining": "Verbinden met {title}…",
        "in_waiting_for_host": "U bent binnen bij {title}. We wachten op de begeleider.",
        "lobby": "Een ogenblik. De begeleider laat u zo binnen.",
        "waiting_for": "Wachten op {name}…",
        "calling_out": "U belt {name}…",
        "calling_ringing": "We wachten tot {name} opneemt.",
        "contact_unavailable": "{name} is nu niet bereikbaar. Probeer het later nog eens.",
        "contact_declined": "{name} kan nu niet opnemen. Probeer het later nog eens.",
        "reconnecting": "Geen verbinding — we proberen het opnieuw",
        "leave": "Stoppen",
        "hang_up": "Ophangen",
        "you": "U",
        "no_answer": "{name} neemt nu niet op. Probeer het later nog eens.",
        "join_failed": "Meedoen lukt nu niet. Probeer het straks nog eens.",
        "call_failed": "Het gesprek lukt nu niet. Probeer het straks nog eens.",
        "activity_ended": "De activiteit is afgelopen.",
        "removed": "De begeleider heeft u uit de groep gehaald.",
        "denied": "De begeleider heeft u nu niet binnengelaten.",
        "room_full": "De groep is vol. Probeer het later nog eens.",
        "elsewhere": "U doet nu op een ander apparaat mee.",
        "call_ended": "Het gesprek is afgelopen.",
        "more_family": "Meer familie ({count})",
        "family_title": "Wie wilt u bellen?",
        "back": "Terug",
        "previous": "Vorige",
        "next": "Volgende",
        "page_of": "{page} van {pages}",
    },
    "en": {
        "pairing_title": "Welcome to Verzilvering",
        "pairing_body": "This kiosk is not ready yet. Give this code to your coordinator:",
        "pairing_qr": "Or scan this picture with the phone",
        "pairing_expires": "The code works for {minutes} more minutes. A new one then appears by itself.",
        "pairing_fetching": "One moment, getting the code…",
        "pairing_done": "Done! One moment…",
        "connecting": "Connecting…",
        "offline": "No connection — we keep trying",
        "next_activity": "Next activity",
        "no_activity": "No activity is planned right now.",
        "join": "Join",
        "join_from": "You can join from {time}",
        "today_at": "Today at {time}",
        "tomorrow_at": "Tomorrow at {time}",
        "weekday_at": "{weekday} at {time}",
        "starts_in": "Starts in {duration}",
        "starts_now": "Starting now",
        "running": "Tap Join to take part.",
        "activity_now": "Happening now",
        "family": "Call",
        "call": "Call",
        "volume_down": "Softer",
        "volume_up": "Louder",
        "volume": "Sound",
        "countdown_title": "{title} is starting",
        "countdown_body": "You will join in {seconds} seconds.",
        "not_now": "Not now",
        "invite_title": "We are starting! Will you join?",
        "invite_body": "{title} is starting now.",
        "invite_body_host": "{title} is starting now. {host} invites you.",
        "invite_join": "Yes, I'll join",
        "incoming_title": "{name} is calling you",
        "incoming_trusted_body": "In {seconds} seconds you will see and hear each other.",
        "incoming_body": "Would you like to answer?",
        "answer": "Answer",
        "decline": "Don't answer",
        "missed_call": "Missed call from {name} at {time}",
        "missed_call_busy": "{name} called at {time}, while you were busy",
        "call_back": "Call back",
        "dismiss": "Seen",
        "joining": "Connecting to {title}…",
        "in_waiting_for_host": "You are in {title}. We are waiting for the host.",
        "lobby": "One moment. The host will let you in soon.",
        "waiting_for": "Waiting for {name}…",
        "calling_out": "Calling {name}…",
        "calling_ringing": "Waiting for {name} to answer.",
        "contact_unavailable": "{name} cannot be reached right now. Please try again later.",
        "contact_declined": "{name} cannot answer right now. Please try again later.",
        "reconnecting": "No connection — we keep trying",
        "leave": "Stop",
        "hang_up": "Hang up",
        "you": "You",
        "no_answer": "{name} is not answering now. Please try again later.",
        "join_failed": "Joining does not work right now. Please try again soon.",
        "call_failed": "The call does not work right now. Please try again soon.",
        "activity_ended": "The activity has ended.",
        "removed": "The host has taken you out of the group.",
        "denied": "The host did not let you in this time.",
        "room_full": "The group is full. Please try again later.",
        "elsewhere": "You are now taking part on another device.",
        "call_ended": "The call has ended.",
        "more_family": "More family ({count})",
        "family_title": "Who would you like to call?",
        "back": "Back",
        "previous": "Previous",
        "next": "Next",
        "page_of": "{page} of {pages}",
    },
}

WEEKDAYS = {
    "nl": ("maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag", "zondag"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}
MONTHS = {
    "nl": ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus",
           "september", "oktober", "november", "december"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
}


class Texts:
    def __init__(self, language: str = DEFAULT_LANGUAGE) -> None:
        self.language = language if language in LANGUAGES else DEFAULT_LANGUAGE

    def __call__(self, key: str, **params: object) -> str:
        return STRINGS[self.language][key].format(**params)

    def clock(self, local: dt.datetime) -> str:
        return local.strftime("%H:%M")

    def date(self, local: dt.datetime) -> str:
        day = WEEKDAYS[self.language][local.weekday()]
        month = MONTHS[self.language][local.month - 1]
        text = f"{day} {local.day} {month}"
        return text[0].upper() + text[1:]

    def when(self, start_local: dt.datetime, now_local: dt.datetime) -> str:
        """'Vandaag om 10:00', 'Morgen om 10:00' or 'Dinsdag om 10:00'."""
        time_text = self.clock(start_local)
        days = (start_local.date() - now_local.date()).days
        if days <= 0:
            return self("today_at", time=time_text)
        if days == 1:
            return self("tomorrow_at", time=time_text)
        weekday = WEEKDAYS[self.language][start_local.weekday()]
        return self("weekday_at", weekday=weekday[0].upper() + weekday[1:], time=time_text)

    def duration(self, seconds: float) -> str:
        """'2 uur en 5 minuten', '1 dag', '8 minuten' — rounded up to whole minutes."""
        minutes = max(1, int(-(-seconds // 60)))
        days, rest = divmod(minutes, 24 * 60)
        hours, minutes = divmod(rest, 60)
        nl = self.language == "nl"
        parts = []
        if days:
            parts.append(f"{days} {'dag' if days == 1 else 'dagen'}" if nl else f"{days} {'day' if days == 1 else 'days'}")
        if hours:
            parts.append(f"{hours} uur" if nl else f"{hours} {'hour' if hours == 1 else 'hours'}")
        if minutes and not days:
            parts.append(
                f"{minutes} {'minuut' if minutes == 1 else 'minuten'}"
                if nl
                else f"{minutes} {'minute' if minutes == 1 else 'minutes'}"
            )
        joiner = " en " if nl else " and "
        return joiner.join(parts)
