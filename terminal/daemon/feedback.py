"""What the shopper and cashier see and hear after a decision: a customer pole display and
a beeper/LED, driven through drivers/feedback, or the log. Outputs never block the engine:
each has its own small queue and thread."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from coupons.decision import Decision
from coupons.i18n import N_, translate
from coupons.money import format_amount
from coupons.reasons import Reason
from terminal.daemon.config import OutputSection

log = logging.getLogger(__name__)
ACCEPTED = N_("Coupon accepted")
REFUSED = N_("Coupon refused")
GIFT = N_("Free gift")
READY = N_("Coupon ready")


class Output(Protocol):
    name: str

    def start(self) -> None: ...

    def show(self, decision: Decision) -> None: ...

    def stop(self) -> None: ...


class Device(Protocol):
    """A customer-facing device (drivers/feedback/); one with a close() is closed on stop."""

    def show(self, accepted: bool, lines: tuple[str, str]) -> None: ...


def money(minor: int, currency: str | None, lang: str = "en", encoding: str | None = None) -> str:
    """The amount as every screen writes it (coupons.money.format_amount): "-¥20.00"; with
    the currency's code ("-CNY 20.00") on a display whose character set has no symbol for
    it. A display's line never wraps: no joiners, which it would show as spaces."""
    text = format_amount(minor, currency, lang, one_unit=False)
    if encoding is not None:
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            text = format_amount(minor, currency, lang, code=True, one_unit=False)
    return text


def lines_for(decision: Decision, lang: str, encoding: str | None = None) -> tuple[str, str]:
    """Two short lines for a customer display: the verdict, then the amount or the reason
    (amounts in what the display's `encoding` can show)."""
    if decision.accepted:
        head = translate(ACCEPTED, lang)
        if decision.gift_sku:
            return head, translate(GIFT, lang) + f": {decision.gift_sku}"
        return head, money(-decision.discount_minor, decision.currency, lang, encoding)
    if decision.reason is Reason.NEEDS_TOTAL:
        return translate(READY, lang), decision.reason.message(lang)
    return translate(REFUSED, lang), decision.reason.message(lang)


class _Queued:
    """Runs a device's show() on its own thread so a slow or unplugged device never holds
    up the engine; keeps only the latest few decisions."""

    def __init__(self, name: str, device: Device, lang: str) -> None:
        self.name = name
        self.device = device
        self.lang = lang
        self._queue: queue.Queue[Decision | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name=f"output-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def show(self, decision: Decision) -> None:
        try:
            self._queue.put_nowait(decision)
        except queue.Full:
            log.warning("output %s is behind; dropping a display update", self.name)

    def _run(self) -> None:
        while (decision := self._queue.get()) is not None:
            try:
                encoding = getattr(self.device, "encoding", None)
                self.device.show(decision.accepted, lines_for(decision, self.lang, encoding))
            except Exception as exc:  # an unplugged display is a warning, not a fault
                log.warning("output %s failed: %s", self.name, exc)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(1.0)
        close = getattr(self.device, "close", None)
        if close is not None:
            close()


class LogDevice:
    def show(self, accepted: bool, lines: tuple[str, str]) -> None:
        log.info("display: %s | %s", *lines)


def create(spec: OutputSection, lang: str) -> Output:
    device: Device
    if spec.kind == "log":
        device = LogDevice()
    elif spec.kind == "pole-display":
        from drivers.feedback.pole import PoleDisplay

        device = PoleDisplay(
            spec.port or "",
            spec.baudrate,
            spec.width,
            encoding=spec.encoding,
            protocol=spec.protocol,
        )
    else:
        from drivers.feedback.beeper import ACCEPT_BYTES, REFUSE_BYTES, Beeper

        device = Beeper(
            port=spec.port,
            gpio=spec.gpio,
            baudrate=spec.baudrate,
            chip=spec.chip,
            active_low=spec.active_low,
            accept_bytes=[bytes.fromhex(h) for h in spec.accept_hex]
            if spec.accept_hex
            else ACCEPT_BYTES,
            refuse_bytes=[bytes.fromhex(h) for h in spec.refuse_hex]
            if spec.refuse_hex
            else REFUSE_BYTES,
        )
    return _Queued(spec.name, device, lang)
