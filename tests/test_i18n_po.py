"""Reading .po catalogs through Babel: the entries gettext would use, and nothing else."""

from __future__ import annotations

import re

import pytest
from babel.messages.pofile import PoFileError

from coupons import i18n

HEADER = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'


def test_escaped_quotes_and_newlines() -> None:
    po = HEADER + 'msgid "Say \\"hi\\"\\n"\nmsgstr "说\\"你好\\"\\n"\n'
    assert i18n.parse_po(po) == {'Say "hi"\n': '说"你好"\n'}


def test_multi_line_msgid_and_msgstr() -> None:
    po = HEADER + 'msgid ""\n"Hello "\n"world."\nmsgstr ""\n"你好"\n"，世界。"\n'
    assert i18n.parse_po(po) == {"Hello world.": "你好，世界。"}


def test_plural_entry_maps_its_singular_to_the_first_form() -> None:
    # The hand-written parser read msgid_plural/msgstr[n] as nothing (or glued them onto
    # the msgid); gettext gives a lone gettext(singular) the n=1 form.
    po = HEADER + 'msgid "One coupon"\nmsgid_plural "%d coupons"\nmsgstr[0] "%d 张券"\n'
    assert i18n.parse_po(po) == {"One coupon": "%d 张券"}


@pytest.mark.parametrize(
    "entry",
    [
        'msgid "Untranslated"\nmsgstr ""\n',
        '#, fuzzy\nmsgid "Guessed"\nmsgstr "猜的"\n',
        '#~ msgid "Obsolete"\n#~ msgstr "过时"\n',
        'msgctxt "button"\nmsgid "Open"\nmsgstr "打开"\n',
    ],
    ids=["untranslated", "fuzzy", "obsolete", "context"],
)
def test_entries_gettext_would_not_use_are_left_out(entry: str) -> None:
    assert i18n.parse_po(HEADER + entry + '\nmsgid "Kept"\nmsgstr "保留"\n') == {"Kept": "保留"}


def test_a_broken_catalog_fails_loudly() -> None:
    with pytest.raises(PoFileError):
        i18n.parse_po(HEADER + 'msgid "Broken"\nmsgstr "坏"\nnot a po line\n')


def test_every_shipped_entry_is_read() -> None:
    # Holds the catalog to the file: an entry Babel skipped would vanish from the count.
    text = (i18n.LOCALE_DIR / "zh_CN.po").read_text(encoding="utf-8")
    entries = len(re.findall(r"^msgid ", text, flags=re.MULTILINE)) - 1  # less the header
    assert len(i18n.catalog("zh_CN")) == entries > 100
