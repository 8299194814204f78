"""Money as integer minor units with an ISO 4217 currency code; never a float."""

from __future__ import annotations

from dataclasses import dataclass


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

    def format(self) -> str:
        """Two-decimal display; all currencies shipped today use two minor digits."""
        sign = "-" if self.minor < 0 else ""
        units, cents = divmod(abs(self.minor), 100)
        return f"{sign}{units}.{cents:02d} {self.currency}"


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
