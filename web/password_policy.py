"""What a new staff password must be: the rules of NIST SP 800-63B (section 5.1.1.2).

- At least `MIN_PASSWORD` characters and at most `MAX_PASSWORD` (any characters, spaces
  included: a passphrase is welcome; no rules about digits or symbols).
- Not a password that is used often (`common_passwords.txt`, see its header for where the
  list comes from), also not one of those with digits or symbols around it ("Welkom2024!")
  or letters swapped for look-alike digits ("p@ssw0rd").
- Not one character, or a short piece, repeated ("1111111111", twelve spaces,
  "abcabcabcabc"), and not a run along the keyboard or the alphabet ("qwertyuiop").
- Not made from the account's username or name ("carla", "carla2024", "alrac!!").

Used for every new password: `verzilvering admin create-user` and the staff form at /admin
(new accounts and password changes). The answer is a msgid (`web/i18n.py`).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

from .i18n import N_

MIN_PASSWORD = 10
MAX_PASSWORD = 256
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")

TOO_SHORT = N_("A password needs at least 10 characters.")
TOO_LONG = N_("A password can be at most 256 characters.")
PATTERN = N_("This password is a pattern that is easy to guess, such as one character repeated or 1234567890. Choose another.")
COMMON = N_("This password is used by many people, so it is easy to guess. Choose another.")
PERSONAL = N_("A password may not be made from your username or name. Choose another.")

# Runs a password may not be a piece of: keyboard rows (QWERTY and AZERTY), digits, the alphabet.
_RUNS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "azertyuiop", "qsdfghjklm", "wxcvbn",
         "abcdefghijklmnopqrstuvwxyz", "0123456789")
_LOOKALIKES = str.maketrans({"@": "a", "4": "a", "8": "b", "3": "e", "1": "i", "!": "i", "0": "o",
                             "$": "s", "5": "s", "7": "t", "2": "z"})
_DECORATION = re.compile(r"^[\W\d_]+|[\W\d_]+$")
_REPEATED = re.compile(r"(.+?)\1+", re.S)
# A name's part shorter than this is not held against a password ("jan" in "januari").
_MIN_NAME_PART = 4
# Letters a password needs besides the username or name to count as its own.
_MIN_REST_LETTERS = 5


@cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def check_new_password(password: str, *, username: str = "", name: str = "") -> str | None:
    """A msgid explaining what is wrong with a new password, or None when it will do."""
    if len(password) < MIN_PASSWORD:
        return TOO_SHORT
    if len(password) > MAX_PASSWORD:
        return TOO_LONG
    folded = unicodedata.normalize("NFKC", password).casefold()
    compact = "".join(folded.split())
    if _is_pattern(compact):
        return PATTERN
    if _is_common(compact):
        return COMMON
    if any(_made_from(compact, word) for word in _personal_words(username, name)):
        return PERSONAL
    return None


def _is_pattern(compact: str) -> bool:
    if len(set(compact)) <= 2 or _REPEATED.fullmatch(compact):
        return True
    return any(compact in run or compact in run[::-1] for run in _RUNS)


def _is_common(compact: str) -> bool:
    common = common_passwords()
    stripped = _DECORATION.sub("", compact)
    candidates = {compact, compact.translate(_LOOKALIKES), stripped.translate(_LOOKALIKES)}
    candidates |= {_DECORATION.sub("", c) for c in candidates if len(_DECORATION.sub("", c)) >= 4}
    if len(stripped) >= 4:
        candidates.add(stripped)
    return not candidates.isdisjoint(common)


def _personal_words(username: str, name: str) -> set[str]:
    """The username, each part of the name and the whole name, as they would be typed."""
    user = unicodedata.normalize("NFKC", username).casefold().strip()
    parts = unicodedata.normalize("NFKC", name).casefold().split()
    words = {p for p in [*parts, "".join(parts)] if len(p) >= _MIN_NAME_PART}
    if len(user) >= 3:
        words.add(user)
    return words


def _made_from(compact: str, word: str) -> bool:
    for piece in (word, word[::-1]):
        if piece in compact:
            # What is left must be a password of its own, not "xx", "2024" or "!!".
            letters = [ch for ch in compact.replace(piece, "") if ch.isalpha()]
            if len(letters) < _MIN_REST_LETTERS or len(set(letters)) <= 2:
                return True
    return False
