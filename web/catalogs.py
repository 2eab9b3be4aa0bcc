"""Translation catalogs: extract messages, compile `.po` to `.mo`, check completeness.

The web pages use the standard library's `gettext` with GNU `.po`/`.mo` catalogs under
`web/locale/<lang>/LC_MESSAGES/verzilvering.po`. Message ids are the English text. This
module is the small build tool for them, so nothing outside Python is needed:

    python -m web.catalogs extract   # list message ids used in code that a catalog lacks
    python -m web.catalogs compile   # write the .mo next to every .po (msgfmt-compatible)
    python -m web.catalogs check     # fail unless every catalog translates every message

`web.i18n` compiles in memory at start when a `.mo` is missing or older than its `.po`,
so a checkout works without a build step; `compile` is for packaging.
"""

from __future__ import annotations

import ast
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
LOCALE_DIR = WEB_DIR / "locale"
DOMAIN = "verzilvering"
LANGUAGES = ("nl", "en")

# _("…") / N_("…") with a literal first argument, in templates and Python alike.
_CALL = re.compile(r"""\bN?_\(\s*(?P<q>["'])(?P<text>(?:\\.|(?!(?P=q)).)*)(?P=q)""", re.S)
# ngettext("…", "…", n): a count's singular and plural.
_NCALL = re.compile(
    r"""\bngettext\(\s*(?P<q>["'])(?P<text>(?:\\.|(?!(?P=q)).)*)(?P=q)\s*,"""
    r"""\s*(?P<q2>["'])(?P<plural>(?:\\.|(?!(?P=q2)).)*)(?P=q2)""",
    re.S,
)
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


class CatalogError(ValueError):
    pass


# Both catalogs' languages have two plural forms (Plural-Forms: nplurals=2; plural=(n != 1)).
PLURAL_FORMS = 2


@dataclass
class Message:
    msgid: str
    msgstr: str = ""
    fuzzy: bool = False
    comments: list[str] = field(default_factory=list)
    # For counts (ngettext): the English plural, and the translation per plural form.
    plural: str | None = None
    plural_strs: list[str] = field(default_factory=list)

    @property
    def translated(self) -> bool:
        if self.plural is not None:
            return len(self.plural_strs) == PLURAL_FORMS and all(self.plural_strs)
        return bool(self.msgstr)


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(lang: str) -> Path:
    return po_path(lang).with_suffix(".mo")


# --- .po parsing ------------------------------------------------------------------------


def _unquote(literal: str, where: str) -> str:
    literal = literal.strip()
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise CatalogError(f"{where}: expected a quoted string, got {literal!r}")
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        raise CatalogError(f"{where}: bad string {literal!r}") from None
    if not isinstance(value, str):
        raise CatalogError(f"{where}: bad string {literal!r}")
    return value


# A .po keyword, and the Message field its string (with its continuation lines) goes to.
_MESSAGE_FIELDS = {"msgid": "msgid", "msgid_plural": "plural", "msgstr": "msgstr"}


def parse_po(text: str, name: str = "<po>") -> dict[str, Message]:
    """Parses the subset of the PO format we write: msgid/msgstr, plural forms
    (msgid_plural/msgstr[n]), comments, fuzzy flags. Contexts are refused rather than
    silently mistranslated."""
    messages: dict[str, Message] = {}
    current: Message | None = None
    section: str | None = None
    comments: list[str] = []
    fuzzy = False

    def finish() -> None:
        nonlocal current
        if current is not None:
            if current.plural is not None and (current.msgstr or not current.plural_strs):
                raise CatalogError(f"{name}: {current.msgid!r} has a plural but no msgstr[n] lines")
            if current.msgid in messages:
                raise CatalogError(f"{name}: duplicate msgid {current.msgid!r}")
            messages[current.msgid] = current
        current = None

    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if section is not None and section.startswith("msgstr"):
                finish()
                section = None
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            elif not line.startswith("#~"):
                comments.append(line)
            continue
        if line.startswith("msgctxt"):
            raise CatalogError(f"{where}: contexts are not used here")
        keyword, _, rest = line.partition(" ")
        if keyword in ("msgid_plural", "msgstr"):
            if current is None or section != "msgid":
                raise CatalogError(f"{where}: {keyword} without msgid")
            setattr(current, _MESSAGE_FIELDS[keyword], _unquote(rest, where))
            section = keyword
        elif line.startswith("msgstr["):
            index, _, rest = line[7:].partition("] ")
            if current is None or current.plural is None or index != str(len(current.plural_strs)):
                raise CatalogError(f"{where}: msgstr[{index}] out of place")
            current.plural_strs.append(_unquote(rest, where))
            section = "msgstr[]"
        elif keyword == "msgid":
            finish()
            current = Message(_unquote(rest, where), fuzzy=fuzzy, comments=comments)
            comments, fuzzy, section = [], False, "msgid"
        elif line.startswith('"'):
            if current is None or section is None:
                raise CatalogError(f"{where}: continuation line outside a message")
            if section == "msgstr[]":
                current.plural_strs[-1] += _unquote(line, where)
            else:
                field_name = _MESSAGE_FIELDS[section]
                setattr(current, field_name, getattr(current, field_name) + _unquote(line, where))
        else:
            raise CatalogError(f"{where}: cannot read {line!r}")
    finish()
    return messages


# --- .mo writing (the layout GNU msgfmt produces) ----------------------------------------


def compile_mo(messages: dict[str, Message]) -> bytes:
    """GNU .mo bytes for the translated, non-fuzzy messages (the header included)."""
    pairs = sorted(
        (m.msgid.encode(), m.msgstr.encode())
        for m in messages.values()
        if m.plural is None and m.msgstr and (not m.fuzzy or m.msgid == "")
    ) + sorted(
        # GNU layout for plurals: "singular\0plural" → "form 0\0form 1".
        ((m.msgid + "\0" + m.plural).encode(), "\0".join(m.plural_strs).encode())
        for m in messages.values()
        if m.plural is not None and m.translated and not m.fuzzy
    )
    pairs.sort()
    ids = b""
    strs = b""
    offsets = []
    for msgid, msgstr in pairs:
        offsets.append((len(ids), len(msgid), len(strs), len(msgstr)))
        ids += msgid + b"\0"
        strs += msgstr + b"\0"
    count = len(pairs)
    key_start = 7 * 4 + 16 * count
    value_start = key_start + len(ids)
    key_table: list[int] = []
    value_table: list[int] = []
    for id_off, id_len, str_off, str_len in offsets:
        key_table += [id_len, key_start + id_off]
        value_table += [str_len, value_start + str_off]
    header = struct.pack(
        "Iiiiiii",
        0x950412DE,  # magic
        0,  # version
        count,
        7 * 4,  # start of key index
        7 * 4 + count * 8,  # start of value index
        0,  # hash table size (none)
        0,  # hash table offset
    )
    return header + struct.pack(f"{len(key_table)}i", *key_table) + struct.pack(
        f"{len(value_table)}i", *value_table
    ) + ids + strs


def load_catalog(lang: str) -> dict[str, Message]:
    path = po_path(lang)
    return parse_po(path.read_text(encoding="utf-8"), str(path))


def compile_all() -> list[Path]:
    written = []
    for lang in LANGUAGES:
        target = mo_path(lang)
        target.write_bytes(compile_mo(load_catalog(lang)))
        written.append(target)
    return written


# --- extraction and checks ---------------------------------------------------------------


def source_files() -> list[Path]:
    files = sorted(WEB_DIR.glob("*.py")) + sorted((WEB_DIR / "templates").rglob("*.html"))
    return [f for f in files if f.name != "catalogs.py"]


def _literal(quote: str, text: str, where: str) -> str:
    literal = quote + text + quote
    try:
        return ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        raise CatalogError(f"{where}: cannot read {literal}") from None


def extract() -> dict[str, list[str]]:
    """msgid → the files using it (a count's msgid is its singular)."""
    found: dict[str, list[str]] = {}
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for pattern in (_CALL, _NCALL):
            for match in pattern.finditer(text):
                msgid = _literal(match.group("q"), match.group("text"), path.name)
                found.setdefault(msgid, []).append(path.name)
    return found


def extract_plurals() -> dict[str, str]:
    """A count's singular msgid → its plural, as ngettext calls give them."""
    plurals: dict[str, str] = {}
    for path in source_files():
        for match in _NCALL.finditer(path.read_text(encoding="utf-8")):
            singular = _literal(match.group("q"), match.group("text"), path.name)
            plurals[singular] = _literal(match.group("q2"), match.group("plural"), path.name)
    return plurals


def problems() -> list[str]:
    """Everything that keeps the catalogs from being complete and consistent."""
    used = extract()
    plurals = extract_plurals()
    issues = []
    for lang in LANGUAGES:
        catalog = load_catalog(lang)
        for msgid in used:
            message = catalog.get(msgid)
            if message is None:
                issues.append(f"{lang}: missing {msgid!r}")
            elif message.plural != plurals.get(msgid):
                issues.append(f"{lang}: plural of {msgid!r} is {message.plural!r}, the code says {plurals.get(msgid)!r}")
            elif not message.translated or message.fuzzy:
                issues.append(f"{lang}: untranslated {msgid!r}")
            elif _placeholders_differ(message):
                issues.append(f"{lang}: placeholders differ in {msgid!r}")
        for msgid in catalog:
            if msgid and msgid not in used:
                issues.append(f"{lang}: unused {msgid!r}")
        header = catalog.get("")
        if header is None or "charset=UTF-8" not in header.msgstr:
            issues.append(f"{lang}: header without charset=UTF-8")
    return issues


def _placeholders_differ(message: Message) -> bool:
    def names(text: str) -> set[str]:
        return set(_PLACEHOLDER.findall(text))

    if message.plural is None:
        return names(message.msgid) != names(message.msgstr)
    # A singular may leave the count out ("The latest change"); the plural form may not.
    allowed = names(message.msgid) | names(message.plural)
    return any(not names(text) <= allowed for text in message.plural_strs) or names(
        message.plural_strs[-1]
    ) != names(message.plural)


def _po_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def missing_entries(lang: str) -> str:
    """PO entries (empty msgstr) for message ids the catalog lacks, to paste in."""
    catalog = load_catalog(lang)
    plurals = extract_plurals()
    out = []
    for msgid, files in extract().items():
        if msgid in catalog:
            continue
        if msgid in plurals:
            strs = "".join(f'msgstr[{i}] ""\n' for i in range(PLURAL_FORMS))
            out.append(f"#: {', '.join(sorted(set(files)))}\nmsgid {_po_quote(msgid)}\n"
                       f"msgid_plural {_po_quote(plurals[msgid])}\n{strs}")
        else:
            out.append(f"#: {', '.join(sorted(set(files)))}\nmsgid {_po_quote(msgid)}\nmsgstr \"\"\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "check"
    if command == "compile":
        for path in compile_all():
            print(f"wrote {path.relative_to(WEB_DIR.parent)}")
        return 0
    if command == "extract":
        for lang in LANGUAGES:
            entries = missing_entries(lang)
            if entries:
                print(f"# ---- {lang} ----\n{entries}")
        return 0
    if command == "check":
        issues = problems()
        for issue in issues:
            print(issue, file=sys.stderr)
        return 1 if issues else 0
    print("usage: python -m web.catalogs {extract|compile|check}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
