"""Translation of user-facing strings: English msgids, gettext .po catalogs per language."""

from __future__ import annotations

import ast
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


def _unquote(text: str) -> str:
    value = ast.literal_eval(text)
    if not isinstance(value, str):
        raise ValueError(f"not a string: {text!r}")
    return value


def parse_po(text: str) -> dict[str, str]:
    """Read the msgid/msgstr pairs of a .po file (single and continued lines)."""
    catalog: dict[str, str] = {}
    field: str | None = None
    parts: dict[str, str] = {}

    def flush() -> None:
        if parts.get("msgid") and parts.get("msgstr"):
            catalog[parts["msgid"]] = parts["msgstr"]

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("msgid "):
            flush()
            parts = {"msgid": _unquote(line[6:])}
            field = "msgid"
        elif line.startswith("msgstr "):
            field = "msgstr"
            parts["msgstr"] = _unquote(line[7:])
        elif line.startswith('"') and field:
            parts[field] += _unquote(line)
    flush()
    return catalog


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
