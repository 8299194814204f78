"""Money as integer minor units with an ISO 4217 currency code; never a float; and the one
way an amount is shown to a person (`format_amount`)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from coupons.i18n import babel_locale

# Between an amount's sign and the rest: U+2060 WORD JOINER, so that "-¥20.00" is one unit a
# line never breaks inside (UAX #14 lets a line break between a sign and a currency symbol).
JOIN = "\u2060"
NBSP = "\u00a0"


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.minor, int) or isinstance(self.minor, bool):
            raise TypeError("money is integer minor units")
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise ValueError(f"bad currency code {self.currency!r}")

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def format(self, lang: str = "en") -> str:
        return format_amount(self.minor, self.currency, lang)


@cache
def _digits(currency: str) -> int:
    from babel.numbers import get_currency_precision  # see coupons.i18n: Babel loads slowly

    return int(get_currency_precision(currency))


def format_amount(
    minor: int,
    currency: str | None,
    lang: str = "en",
    plus: bool = False,
    code: bool = False,
    one_unit: bool = True,
) -> str:
    """Integer minor units as a person reads them in `lang`, with the currency's symbol as
    that language writes it (CLDR, through Babel) and the currency's own number of decimals:
    2000 CNY is "CN¥20.00" in English (CLDR's English keeps ¥ for the yen) and "¥20.00" in
    Chinese; 2000 JPY "¥2,000" / "JP¥2,000". A negative amount carries its sign ("-¥20.00");
    `plus` writes one on a positive amount too ("+¥20.00"). `code`: the ISO code instead of
    the symbol ("CNY 20.00": plain text, a device without the symbol). `one_unit` (pages):
    the text never breaks over two lines (no-break space, a word joiner after the sign).
    Without a currency (a till not yet told its own): the number alone, two decimals."""
    from babel.numbers import format_currency, format_decimal

    locale = babel_locale(lang)
    if not currency:
        text = format_decimal(Decimal(abs(minor)).scaleb(-2), "#,##0.00", locale=locale)
    else:
        amount = Decimal(abs(minor)).scaleb(-_digits(currency))  # exact: never a float
        pattern = "¤¤ #,##0.00" if code else None
        text = format_currency(amount, currency, pattern, locale=locale, currency_digits=True)
    join = JOIN if one_unit else ""
    if one_unit:
        text = text.replace(" ", NBSP)
    if minor < 0:
        return "-" + join + text
    return "+" + join + text if plus and minor > 0 else text


def percent_of(amount_minor: int, basis_points: int) -> int:
    """basis_points/10000 of amount, rounded down so a discount never over-gives."""
    return amount_minor * basis_points // 10_000


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split `total` across `weights` proportionally (largest remainder), summing exactly."""
    whole = sum(weights)
    if whole <= 0 or total <= 0:
        return [0] * len(weights)
    shares = [total * w // whole for w in weights]
    rest = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:rest]:
        shares[i] += 1
    return shares
