"""Translation of user-facing strings: English msgids, gettext .po catalogs per language."""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "zh_CN")


MARKED: set[str] = set()


def N_(message: str) -> str:
    """Mark a string for translation without translating it yet (and remember it, so a
    test can hold the catalogs to exactly the marked strings)."""
    MARKED.add(message)
    return message


def parse_po(text: str) -> dict[str, str]:
    """Map each msgid of a .po file to its translation, as gettext would use it: the header,
    untranslated, fuzzy and obsolete entries are left out, and so are entries with a
    msgctxt (this module has no pgettext); a plural entry's singular maps to its first
    form (the form gettext gives a lone `gettext(singular)` in the languages we ship)."""
    # Imported here, not at the top: only a till set to another language reads a catalog,
    # and Babel's import is most of the cost of loading one.
    from babel.messages.pofile import read_po

    out: dict[str, str] = {}
    # abort_invalid: a broken catalog fails loudly (the tests load it) instead of losing
    # entries one by one to a logged warning.
    for message in read_po(text.splitlines(), abort_invalid=True):
        if not message.id or message.context or message.fuzzy:
            continue
        msgid = message.id if isinstance(message.id, str) else message.id[0]
        string = message.string
        msgstr = string if isinstance(string, str) else string[0] if string else ""
        if msgstr:
            out[msgid] = msgstr
    return out


@cache
def catalog(lang: str) -> dict[str, str]:
    path = LOCALE_DIR / f"{lang}.po"
    if lang == "en" or not path.exists():
        return {}
    return parse_po(path.read_text(encoding="utf-8"))


def normalize_lang(lang: str | None) -> str:
    if not lang:
        return "en"
    lang = lang.replace("-", "_")
    if lang.lower().startswith("zh"):
        return "zh_CN"
    return "en"


def translate(message: str, lang: str = "en") -> str:
    return catalog(normalize_lang(lang)).get(message, message)


# The CLDR locale whose numbers, currency symbols and dates a language's pages use.
BABEL_LOCALES = {"en": "en", "zh_CN": "zh_Hans_CN"}


def babel_locale(lang: str | None) -> str:
    return BABEL_LOCALES[normalize_lang(lang)]


def format_day(day: dt.date, lang: str = "en") -> str:
    """A calendar day as `lang` writes it: "2026年11月25日" in Chinese; ISO 8601
    ("2026-11-25") in English, the order no reader mistakes (CLDR's English is the US
    month-first order)."""
    if normalize_lang(lang) == "en":
        return day.isoformat()
    from babel.dates import format_skeleton

    return str(format_skeleton("yMMMd", day, locale=babel_locale(lang)))


def format_moment(moment: dt.datetime, lang: str = "en") -> str:
    """A day and a time to the minute: "2026年11月25日 08:05", or "2026-11-25 08:05"."""
    if normalize_lang(lang) == "en":
        return moment.strftime("%Y-%m-%d %H:%M")
    from babel.dates import format_time

    hm = format_time(moment, "HH:mm", locale=babel_locale(lang))
    return f"{format_day(moment.date(), lang)} {hm}"
