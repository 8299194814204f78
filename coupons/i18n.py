"""Translation of user-facing strings: English msgids, gettext .po catalogs per language."""

from __future__ import annotations

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
