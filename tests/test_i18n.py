"""Every reason a till can give has a sentence a cashier can say, in English and in
Simplified Chinese."""

from __future__ import annotations

import re

import pytest

from coupons import i18n
from coupons.decision import Decision
from coupons.reasons import MESSAGES, Reason

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("reason", list(Reason))
def test_english_message(reason: Reason) -> None:
    assert reason in MESSAGES
    text = reason.message("en")
    assert text == MESSAGES[reason]
    assert text.strip() == text and len(text) > 5
    assert text[0].isupper() and text.endswith(".")
    assert reason.message() == text


def test_english_messages_are_distinct() -> None:
    texts = [MESSAGES[r] for r in Reason]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("reason", list(Reason))
def test_chinese_translation(reason: Reason) -> None:
    zh = reason.message("zh_CN")
    assert zh != MESSAGES[reason], f"no zh_CN translation for {reason.value}"
    assert CJK.search(zh), f"zh_CN message for {reason.value} has no Chinese: {zh!r}"


def test_chinese_catalog_has_no_stale_entries() -> None:
    # A msgid that matches no marked English string means an English string changed and its
    # translation silently stopped being used.
    import kiosk_ui.api  # noqa: F401  (and the POS API's answers)
    import kiosk_ui.pages  # noqa: F401  (marks the kiosk's strings)
    import sync.central.console.pages  # noqa: F401  (the head-office console's strings)
    import terminal.daemon.feedback  # noqa: F401  (marks the display strings)

    stale = set(i18n.catalog("zh_CN")) - i18n.MARKED
    assert not stale


def test_every_marked_string_is_translated() -> None:
    import kiosk_ui.api  # noqa: F401
    import kiosk_ui.pages  # noqa: F401
    import sync.central.console.pages  # noqa: F401
    import terminal.daemon.feedback  # noqa: F401

    missing = {m for m in i18n.MARKED if i18n.translate(m, "zh_CN") == m}
    assert not missing


@pytest.mark.parametrize("lang", ["zh_CN", "zh-CN", "zh", "zh-Hans", "ZH_cn"])
def test_chinese_language_tags(lang: str) -> None:
    assert Reason.EXPIRED.message(lang) == Reason.EXPIRED.message("zh_CN")


@pytest.mark.parametrize("lang", ["en", "en-GB", "", "fr", "de_DE"])
def test_other_languages_fall_back_to_english(lang: str) -> None:
    assert Reason.EXPIRED.message(lang) == MESSAGES[Reason.EXPIRED]


def test_decision_carries_the_message() -> None:
    d = Decision(False, Reason.EXPIRED)
    assert d.to_dict()["message"] == MESSAGES[Reason.EXPIRED]
    assert CJK.search(d.to_dict("zh_CN")["message"])
    assert Decision.from_dict(d.to_dict("zh_CN")) == d


def test_po_parser_joins_continued_lines() -> None:
    catalog = i18n.parse_po(
        '# comment\nmsgid ""\nmsgstr "header"\n\n'
        'msgid "Hello "\n"world."\nmsgstr "你好"\n"，世界。"\n'
    )
    assert catalog == {"Hello world.": "你好，世界。"}


def test_the_reasons_page_holds_every_reason_as_the_code_says_it() -> None:
    # docs/reasons.md's table is generated from Reason, MESSAGES and the zh_CN catalog; this
    # keeps it equal to them (the "when" column is prose and is only required to be there).
    from pathlib import Path

    page = Path(__file__).parents[1] / "docs" / "reasons.md"
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    ]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (f"`{r.value}`", r.message("en"), r.message("zh_CN")) for r in Reason
    ]
    assert all(len(r) == 4 and r[1] for r in rows)


def test_the_reasons_page_is_what_its_generator_writes() -> None:
    # `python -m coupons.reasons_doc` regenerates both tables (reasons, checkout steps); a
    # page that differs was edited by hand or not regenerated after a change in the code.
    from coupons import reasons_doc

    page = reasons_doc.PAGE.read_text(encoding="utf-8")
    assert reasons_doc.render(page) == page
    assert reasons_doc.UNDESCRIBED not in page.split("## Checkout steps")[0]
