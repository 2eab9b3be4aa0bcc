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
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


class CatalogError(ValueError):
    pass


@dataclass
class Message:
    msgid: str
    msgstr: str = ""
    fuzzy: bool = False
    comments: list[str] = field(default_factory=list)


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


def parse_po(text: str, name: str = "<po>") -> dict[str, Message]:
    """Parses the subset of the PO format we write: msgid/msgstr, comments, fuzzy flags.

    Plural forms and contexts are refused rather than silently mistranslated.
    """
    messages: dict[str, Message] = {}
    current: Message | None = None
    section: str | None = None
    comments: list[str] = []
    fuzzy = False

    def finish() -> None:
        nonlocal current
        if current is not None:
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
            if section == "msgstr":
                finish()
                section = None
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            elif not line.startswith("#~"):
                comments.append(line)
            continue
        if line.startswith(("msgctxt", "msgid_plural", "msgstr[")):
            raise CatalogError(f"{where}: contexts and plural forms are not used here")
        if line.startswith("msgid "):
            finish()
            current = Message(_unquote(line[6:], where), fuzzy=fuzzy, comments=comments)
            comments, fuzzy, section = [], False, "msgid"
        elif line.startswith("msgstr "):
            if current is None or section != "msgid":
                raise CatalogError(f"{where}: msgstr without msgid")
            current.msgstr = _unquote(line[7:], where)
            section = "msgstr"
        elif line.startswith('"'):
            if current is None or section is None:
                raise CatalogError(f"{where}: continuation line outside a message")
            if section == "msgid":
                current.msgid += _unquote(line, where)
            else:
                current.msgstr += _unquote(line, where)
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
        if m.msgstr and (not m.fuzzy or m.msgid == "")
    )
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


def extract() -> dict[str, list[str]]:
    """msgid → the files using it."""
    found: dict[str, list[str]] = {}
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for match in _CALL.finditer(text):
            literal = match.group("q") + match.group("text") + match.group("q")
            try:
                msgid = ast.literal_eval(literal)
            except (ValueError, SyntaxError):
                raise CatalogError(f"{path.name}: cannot read {literal}") from None
            found.setdefault(msgid, []).append(path.name)
    return found


def problems() -> list[str]:
    """Everything that keeps the catalogs from being complete and consistent."""
    used = extract()
    issues = []
    for lang in LANGUAGES:
        catalog = load_catalog(lang)
        for msgid in used:
            message = catalog.get(msgid)
            if message is None:
                issues.append(f"{lang}: missing {msgid!r}")
            elif not message.msgstr or message.fuzzy:
                issues.append(f"{lang}: untranslated {msgid!r}")
            elif set(_PLACEHOLDER.findall(msgid)) != set(_PLACEHOLDER.findall(message.msgstr)):
                issues.append(f"{lang}: placeholders differ in {msgid!r}")
        for msgid in catalog:
            if msgid and msgid not in used:
                issues.append(f"{lang}: unused {msgid!r}")
        header = catalog.get("")
        if header is None or "charset=UTF-8" not in header.msgstr:
            issues.append(f"{lang}: header without charset=UTF-8")
    return issues


def _po_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def missing_entries(lang: str) -> str:
    """PO entries (empty msgstr) for message ids the catalog lacks, to paste in."""
    catalog = load_catalog(lang)
    out = []
    for msgid, files in extract().items():
        if msgid not in catalog:
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
