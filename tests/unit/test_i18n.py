"""One translation mechanism: gettext catalogs, complete in Dutch and English."""

from __future__ import annotations

import gettext
import io
import re
from pathlib import Path

import pytest

from web import catalogs
from web.i18n import gettext_for, translations


def test_every_message_is_translated_in_every_language() -> None:
    assert catalogs.problems() == []
    used = catalogs.extract()
    assert len(used) > 250
    for lang in catalogs.LANGUAGES:
        _ = gettext_for(lang)
        for msgid in used:
            assert _(msgid), (lang, msgid)


def test_dutch_is_really_dutch() -> None:
    nl = gettext_for("nl")
    assert nl("Microphone is off") == "Microfoon staat uit"
    assert nl("%(name)s cannot answer right now", name="Oma") == "Oma kan nu niet opnemen"
    assert nl("%(name)s will answer in 10 seconds", name="Oma") == "Oma neemt op over 10 seconden"
    assert nl("We are calling %(name)s…", name="oma") == "We bellen oma…"
    assert nl("%(name)s cannot be reached", name="Oma") == "Oma is niet bereikbaar"
    assert gettext_for("en")("Microphone is off") == "Microphone is off"
    # Dutch and English differ wherever a sentence is involved.
    plurals = catalogs.extract_plurals()
    same = [m for m in catalogs.extract() if " " in m and m not in plurals and nl(m) == m]
    assert same == ["Start %(title)s"]  # the same word in both languages


def test_no_strings_table_is_left_in_python() -> None:
    source = (Path(catalogs.WEB_DIR) / "__init__.py").read_text()
    assert "STRINGS: dict[str, dict[str, str]]" not in source
    assert "Verbonden" not in source


def test_compiled_catalogs_load_in_gettext_and_match_the_po_files() -> None:
    for lang in catalogs.LANGUAGES:
        messages = catalogs.load_catalog(lang)
        table = gettext.GNUTranslations(io.BytesIO(catalogs.compile_mo(messages)))
        assert table.info()["content-type"] == "text/plain; charset=UTF-8"
        for msgid, message in messages.items():
            if msgid and message.plural is not None:
                forms = [table.ngettext(msgid, message.plural, n) for n in (1, 2)]
                assert forms == message.plural_strs, msgid
            elif msgid:
                assert table.gettext(msgid) == message.msgstr
        assert translations(lang).gettext("Save") == messages["Save"].msgstr


def test_po_parsing_is_strict() -> None:
    parsed = catalogs.parse_po('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                               '#, fuzzy\nmsgid "Save"\nmsgstr "Bewaar"\n\nmsgid "Long "\n"text"\nmsgstr "Lange "\n"tekst"\n')
    assert parsed["Long text"].msgstr == "Lange tekst" and parsed["Save"].fuzzy
    # Fuzzy translations are not used.
    table = gettext.GNUTranslations(io.BytesIO(catalogs.compile_mo(parsed)))
    assert table.gettext("Save") == "Save" and table.gettext("Long text") == "Lange tekst"
    for bad in ('msgid "a"\nmsgstr "b"\nmsgid "a"\nmsgstr "c"\n', 'msgid "a"\nmsgid_plural "as"\n', 'msgstr "x"\n',
                'msgid a\n'):
        with pytest.raises(catalogs.CatalogError):
            catalogs.parse_po(bad)


def test_the_check_catches_missing_and_mismatched_translations(monkeypatch: pytest.MonkeyPatch) -> None:
    real = catalogs.load_catalog

    def broken(lang: str) -> dict[str, catalogs.Message]:
        messages = dict(real(lang))
        if lang == "nl":
            del messages["Save"]
            messages["Call %(name)s"] = catalogs.Message("Call %(name)s", "Bel %(naam)s")
        return messages

    monkeypatch.setattr(catalogs, "load_catalog", broken)
    problems = catalogs.problems()
    assert "nl: missing 'Save'" in problems
    assert "nl: placeholders differ in 'Call %(name)s'" in problems


def test_templates_have_no_untranslated_words() -> None:
    """Text between tags in templates must come from _(); only names and symbols may not."""
    allowed = {"Verzilvering", "Nederlands", "English", "—", "·", "›", "(", ")", ":", ",", "–", "⚠", "✔", "✖",
               "●", "○", "…"}
    for path in sorted((catalogs.WEB_DIR / "templates").rglob("*.html")):
        text = path.read_text()
        text = re.sub(r"{% block \w+_class %}.*?{% endblock %}", " ", text)  # CSS class names
        text = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", text, flags=re.S)
        text = re.sub(r"<script.*?</script>|<[^>]+>", " ", text, flags=re.S)
        words = [
            w for w in text.split()
            if w not in allowed
            and not re.fullmatch(r"[\W\d]+", w)
            # attribute fragments a macro writes into the tag around it
            and not re.fullmatch(r'[\w-]+="[^"]*"?|[\w-]+-', w)
        ]
        assert words == [], f"{path.name}: {words}"


@pytest.mark.parametrize(("lang", "one", "two", "none"), [
    ("nl", "1 activiteit", "2 activiteiten", "0 activiteiten"),
    ("en", "1 activity", "2 activities", "0 activities"),
])
def test_counts_take_the_right_plural_in_both_languages(lang: str, one: str, two: str, none: str) -> None:
    table = translations(lang)
    words = [table.ngettext("%(count)s activity", "%(count)s activities", n) % {"count": n} for n in (1, 2, 0)]
    assert words == [one, two, none]


def test_every_count_on_a_page_goes_through_ngettext() -> None:
    """No msgid with a count placeholder and a plural noun outside ngettext (issue 12, item 6)."""
    plurals = catalogs.extract_plurals()
    assert {"%(count)s senior", "%(count)s activity", "%(count)s senior taking part",
            "%(online)s of %(count)s kiosk online", "%(count)s volunteer or coordinator",
            "%(count)s of %(capacity)s place taken"} <= set(plurals)
    for msgid in catalogs.extract():
        if msgid in plurals or msgid not in catalogs.load_catalog("en"):
            continue
        assert not re.search(r"%\(count\)s (seniors|activities|changes|kiosks|places|volunteers)", msgid), msgid


def test_plural_entries_parse_compile_and_are_checked() -> None:
    po = ('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\nPlural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'
          'msgid "%(count)s cup"\nmsgid_plural "%(count)s cups"\nmsgstr[0] "%(count)s kopje"\nmsgstr[1] "%(count)s "\n"kopjes"\n')
    parsed = catalogs.parse_po(po)
    assert parsed["%(count)s cup"].plural_strs == ["%(count)s kopje", "%(count)s kopjes"]
    table = gettext.GNUTranslations(io.BytesIO(catalogs.compile_mo(parsed)))
    assert table.ngettext("%(count)s cup", "%(count)s cups", 1) == "%(count)s kopje"
    assert table.ngettext("%(count)s cup", "%(count)s cups", 3) == "%(count)s kopjes"
    for bad in ('msgid "a"\nmsgid_plural "as"\nmsgstr "x"\n', 'msgid "a"\nmsgid_plural "as"\nmsgstr[1] "x"\n',
                'msgid "a"\nmsgstr[0] "x"\n', 'msgctxt "c"\nmsgid "a"\nmsgstr "b"\n'):
        with pytest.raises(catalogs.CatalogError):
            catalogs.parse_po(bad)
