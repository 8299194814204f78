"""The fuzz targets of issue 6: the token decoder (text and end to end through the engine),
the ledger file reader, the basket reader, the NDEF reader, the serial line framing and the
POS API; and issue 11's config and journal upload (fuzz_config_upload.py). Each is seeded
from real, validly issued inputs and states its own contract."""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.parse
import zlib
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import cbor2

from tests.reliability.fuzz_config_upload import ConfigLoad, JournalUpload
from tests.reliability.fuzz_engine import (
    ByteMutator,
    CborRespeller,
    FuzzFailure,
    Target,
    TextMutator,
    TreeMutator,
    cbor_dumps,
    long_head,
)

LOWER45 = "0123456789abcdefghijklmnopqrstuvwxyz $%*+-./:"
URL_WORDS = ["https://c.example/r?t=", "http://x/", "://", "?c=", "&", "#", "%3A", "%2F", "%"]
URL_WORDS += ["+", "%2B", "%20"]  # a link's '+' is a space (form-encoded) or a plus
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789- "


def _quiet() -> None:
    """Refusals are logged at warning level by design; a million of them is only noise."""
    for name in ("terminal", "drivers", "kiosk_ui", "sync", "peewee"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------- a world to fuzz against


class World:
    """One central and one terminal on a directory, as tests/conftest.py builds them; the
    central issues tokens (short, compressed, customer- and tag-bound) and plain codes."""

    def __init__(self, workdir: str) -> None:
        from coupons import setup
        from coupons.clock import FixedClock
        from coupons.ledger import ledger_file
        from sync.central.store import Central
        from tests.conftest import T0
        from tests.master_key import KEY as MASTER_KEY

        tmp = Path(workdir)
        self.clock = FixedClock(T0)
        self.central = Central.init(tmp / "central", self.clock.now, master_key=MASTER_KEY)
        self.data = tmp / "terminal"
        setup.init(self.data, tmp / "central" / "trust-anchor.json", "S1", "T1")
        self.engine = setup.open_engine(self.data, self.clock)
        c = self.central
        c.add_campaign(
            {
                "id": "TEN",
                "currency": "CNY",
                "kind": "fixed",
                "amount_minor": 1000,
                "stacking": "any",
            }
        )
        c.add_campaign(
            {
                "id": "A-LONG-CAMPAIGN-NAME-TO-COMPRESS",
                "currency": "CNY",
                "kind": "percent",
                "percent": 10,
                "stacking": "any",
            }
        )
        self.tag_uid = bytes.fromhex("04a2c31d5e6f80")
        self.customer = bytes(range(16))
        issued = (
            c.issue("TEN", 3)
            + c.issue("A-LONG-CAMPAIGN-NAME-TO-COMPRESS", 2)
            + c.issue("TEN", 1, customer=self.customer)
            + c.issue("TEN", 1, tag_uid=self.tag_uid)
            + c.issue("TEN", 3, codes=True)
        )
        c.publish()
        # A second version: a serial redeemed elsewhere and a deny-listed tag.
        c.mark([issued[2].serial], "redeemed")
        c.deny("tag", "04deadbeef0000")
        c.publish()
        self.updates = c.deltas(0)
        self.snapshot = c.snapshot()
        result = self.engine.import_ledger(ledger_file(self.updates))
        assert result.applied and not result.refused, result
        self.tokens = [i.token for i in issued if i.token]
        self.codes = [i.code for i in issued if i.code]

    def close(self) -> None:
        self.engine.db.close()
        self.central.db.close()


def cose_bytes(text: str) -> bytes | None:
    """The COSE bytes a token string carries (prefix, base45, zlib undone), or None."""
    from coupons import base45, tokens

    text = text.strip()
    if not text.upper().startswith(tokens.PREFIX):
        return None
    try:
        data = base45.decode(text[len(tokens.PREFIX) :])
    except base45.Base45Error:
        return None
    if data[:1] == b"\x78":
        try:
            data = zlib.decompress(data)
        except zlib.error:
            return None
    return data


def signed_triple(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """What the signature covers and is: (protected, payload, signature)."""
    from coupons import cose

    try:
        m = cose.parse_sign1(data)
    except cose.CoseError:
        return None
    return m.protected, m.payload, m.signature


class Issued:
    """What a World issued, and the one test of "no accept" every target shares: an accepted
    input's COSE bytes are an issued token's, or its signed parts are (an untagged envelope
    or another unprotected header: the same coupon, see docs/decisions.md, counted as
    `envelope_variant`), or it normalises to an issued typed code."""

    def __init__(self, world: World) -> None:
        from coupons.tokens import normalize_code

        self.normalize = normalize_code
        self.cose = {c for t in world.tokens if (c := cose_bytes(t)) is not None}
        self.signed = {signed_triple(c) for c in self.cose}
        self.codes = {normalize_code(c) for c in world.codes}

    def verify(self, code: str, target: Target) -> None:
        """Raise FuzzFailure unless `code` (what engine.check was given) was issued."""
        from coupons import tokens

        target.note("accepted")
        if tokens.looks_like_token(code):
            # A link whose token reads two ways is handed over whole: one reading was taken.
            readings = tokens.url_readings(code.strip()) or [code]
            if len(readings) > 1:
                target.note("link_read_two_ways")
            for reading in readings:
                data = cose_bytes(reading)
                if data in self.cose:
                    return
                if data is not None and signed_triple(data) in self.signed:
                    target.note("envelope_variant")
                    return
            raise FuzzFailure(f"accepted a token that was never issued: {code!r}")
        if self.normalize(code) not in self.codes:
            raise FuzzFailure(f"accepted a code that was never issued: {code!r}")


def decide_scan(world: World, scan: Any, basket: Any) -> tuple[str, Any] | None:
    """What the daemon does with a driver's Scan (Daemon._decide), as a check that records
    nothing: the code extracted from the scan's text, and the engine's decision on it."""
    from coupons import tokens
    from coupons.decision import Context

    code = tokens.extract(scan.text())
    if code is None:
        return None
    tag = scan.meta.get("tag_uid")
    ctx = Context(source=scan.kind, tag_uid=bytes.fromhex(tag) if isinstance(tag, str) else None)
    return code, world.engine.check(code, basket, ctx)


# ---------------------------------------------------------------- token inputs


class TokenInputs:
    """Scan texts made from issued tokens and codes: text-level (base45-alphabet aware,
    prefix case, URL wrapping, percent- and form-encoding) and COSE-level (byte and
    CBOR-structure mutations of the signed message, re-encoded and sometimes re-compressed;
    and second spellings of it, re-signed with the issuer `key` when given, which a strict
    reader must refuse: see `strict_inputs`)."""

    def __init__(
        self, rng: random.Random, tokens_: list[str], codes: list[str], key: Any = None
    ) -> None:
        from coupons.base45 import ALPHABET

        self.rng = rng
        self.key = key
        self.respeller = CborRespeller(rng)
        self.last_strict: str | None = None  # the last input that must be malformed
        self.seeds_text = list(tokens_) + list(codes)
        self.seeds_text += [f"https://c.example/r?t={urllib.parse.quote(t)}" for t in tokens_[:2]]
        # Links as urlencode / URLSearchParams write them (a space as '+'), and with '+' bare.
        self.seeds_text += [
            f"https://c.example/r?{urllib.parse.urlencode({'c': t})}" for t in tokens_[:2]
        ]
        self.seeds_text += [
            f"https://c.example/r?c={urllib.parse.quote(t, safe=':+')}" for t in tokens_[:1]
        ]
        self.seeds_text += ["4006381333931", "https://example.com/product/1", "]Q1" + tokens_[0]]
        self.cose_seeds = [c for t in tokens_ if (c := cose_bytes(t)) is not None]
        self.text = TextMutator(rng, ALPHABET + LOWER45, ["CPN1:", "cpn1:", *URL_WORDS])
        self.code_text = TextMutator(rng, CODE_ALPHABET, ["-", " ", "O", "0", "I", "1"])
        self.bytes = ByteMutator(rng, [b"\xd2", b"\x84", b"\x58\x40", b"\xa0", b"\x78\x9c"])
        self.tree = TreeMutator(rng, cbor=True, keys=[1, 4, -8, -1, -2, -3, -4, 5])

    def generate(self, corpus: list[Any]) -> str:
        from coupons import base45, tokens

        rng = self.rng
        self.last_strict = None
        r = rng.random()
        if r < 0.02:  # a genuine one now and then, so the accepting path runs too
            return rng.choice(self.seeds_text)
        if r < 0.35:
            base = rng.choice(corpus or self.seeds_text)
            m = self.code_text if base[:1].isalnum() and "-" in base[:6] else self.text
            return m.mutate(base, self.seeds_text)
        # COSE level: mutate the signed message and re-encode it as a token.
        data = rng.choice(self.cose_seeds)
        if r < 0.43:
            strict = self._respelled(data)
            if strict is not None:
                self.last_strict = self._wrap(strict)
                return self.last_strict
        if r < 0.65:
            data = self.bytes.mutate(data, self.cose_seeds)
        else:
            data = self._tree(data) or data
        if rng.random() < 0.3:
            data = zlib.compress(data, rng.choice((0, 1, 9)))
            if rng.random() < 0.3:
                data = self.bytes.mutate(data)
        text = tokens.PREFIX + base45.encode(data)
        if rng.random() < 0.1:
            text = rng.choice(("cpn1:", "Cpn1:", " CPN1:")) + text[len(tokens.PREFIX) :]
        if rng.random() < 0.1:
            text = self._link(text)
        return text

    def _link(self, text: str) -> str:
        """The token in a link, written percent-encoded, form-encoded or with '+' bare."""
        rng = self.rng
        quote = rng.choice(
            (
                urllib.parse.quote,
                urllib.parse.quote_plus,
                lambda t: urllib.parse.quote(t, safe=":+"),
            )
        )
        return "https://c.example/r?t=" + quote(text) + rng.choice(("", "&x=1", "+"))

    def _wrap(self, data: bytes) -> str:
        """A message as a scan: a token, sometimes compressed, sometimes in a link."""
        from coupons import base45, tokens

        rng = self.rng
        if rng.random() < 0.3:
            packed = zlib.compress(data, 9)
            data = packed if packed[:1] == b"\x78" else data
        text = tokens.PREFIX + base45.encode(data)
        return self._link(text) if rng.random() < 0.2 else text

    def _respelled(self, data: bytes) -> bytes | None:
        """The message with a map or the envelope spelled a second way (a repeated label or
        claim, an item after a map, a longer head, an indefinite length, a kid in both
        header buckets), re-signed with `key` when the change is inside the signed parts:
        only the strict format check then stands between it and an accept."""
        rng = self.rng
        try:
            obj = cbor2.loads(data)
        except Exception:
            return None
        if not isinstance(obj, cbor2.CBORTag) or len(obj.value) != 4:
            return None
        protected, unprotected, payload, signature = obj.value
        which = rng.randrange(4)
        if which == 0:
            protected = self.respeller.respell(protected) or protected
        elif which == 1:
            payload = self.respeller.respell(payload) or payload
        if self.key is not None and which <= 1:
            signature = self.key.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
        items = [cbor2.dumps(f) for f in (protected, dict(unprotected), payload, signature)]
        if which == 2:  # the envelope's own spelling
            i = rng.randrange(4)
            items[i] = long_head(items[i])
        elif which == 3:  # the unprotected header: the kid twice, or protected as well
            kid = cbor2.dumps(4) + cbor2.dumps(cbor2.loads(protected).get(4, b"kid0"))
            items[1] = rng.choice((b"\xa2" + kid + kid, b"\xa1" + kid))
        out = b"\xd2\x84" + b"".join(items)
        if rng.random() < 0.1:
            out += rng.choice((b"\x00", b"\xa0", out))
        return out if out != data else None

    def _tree(self, data: bytes) -> bytes | None:
        """Mutate the envelope, or the claims or protected header inside it."""
        rng = self.rng
        try:
            obj = cbor2.loads(data)
        except Exception:
            return None
        if rng.random() < 0.4:
            return cbor_dumps(self.tree.mutate(obj))
        if not isinstance(obj, cbor2.CBORTag) or not isinstance(obj.value, (list, tuple)):
            return None
        fields = list(obj.value)
        which = rng.choice((0, 2))  # protected header or claims payload
        try:
            inner = cbor2.loads(fields[which])
        except Exception:
            return None
        encoded = cbor_dumps(self.tree.mutate(inner))
        if encoded is None:
            return None
        fields[which] = encoded
        return cbor_dumps(cbor2.CBORTag(obj.tag, fields))


class TokenText(Target):
    """coupons.tokens / base45 / cose as pure functions: extract(), parse() and the fast
    base45 decoder against its reference. Only TokenMalformed / Base45Error, never another
    exception; the two base45 decoders always agree."""

    name = "tokens"

    def setup(self, workdir: str) -> None:
        _quiet()
        from coupons import base45, cose, tokens

        key = cose.SigningKey(bytes(range(32)))
        toks = [
            tokens.issue(key, tokens.Claims(c, s, 1, 2**31, cr, tu))
            for c, s, cr, tu in [
                ("TEN", 1, None, None),
                ("A" * 40, 2**64 - 1, b"\x01" * 16, b"\x04" * 7),
                ("C", 0, None, b"\x04\xa2"),
            ]
        ]
        codes = ["ABCD-EFGH-JKLM", "abcd efgh jklm"]
        self.inputs = TokenInputs(self.rng, toks, codes, key)
        self.corpus = list(self.inputs.seeds_text)
        self.b45 = base45
        self.tokens = tokens

    def generate(self) -> str:
        return self.inputs.generate(self.corpus)

    def execute(self, text: str) -> Hashable:
        b45, tokens = self.b45, self.tokens
        got = tokens.extract(text)
        if got is not None and not isinstance(got, str):
            raise FuzzFailure(f"extract returned {type(got).__name__}")
        body = text.strip()
        body = body[len(tokens.PREFIX) :] if body.upper().startswith(tokens.PREFIX) else body
        fast: Any
        slow: Any
        try:
            fast = b45.decode(body)
        except b45.Base45Error as exc:
            fast = ("error", str(exc))
        try:
            slow = b45._decode_slow(body)
        except b45.Base45Error as exc:
            slow = ("error", str(exc))
        if fast != slow:
            raise FuzzFailure(f"base45 decode {fast!r} != reference {slow!r}")
        if isinstance(fast, bytes) and b45.decode(b45.encode(fast)) != fast:
            raise FuzzFailure("base45 does not round-trip")
        tokens.normalize_code(text)
        strict = text == self.inputs.last_strict
        for candidate in (text, got):
            if candidate is None:
                continue
            try:
                tok = tokens.parse(candidate)
            except tokens.TokenMalformed as exc:
                outcome = str(exc)[:40]
            else:
                outcome = "parsed"
                if not isinstance(tok.claims.serial, int):
                    raise FuzzFailure("parsed a token with a non-integer serial")
                if strict:
                    raise FuzzFailure(f"read a second spelling of a signed message: {text!r}")
        return (got is None, outcome if got is not None or text else "", type(fast).__name__)


class EngineCheck(Target):
    """End to end: what a scanner delivers, through tokens.extract and engine.check. Never
    raises; never accepts anything that is not an issued token or code. An accepted token
    whose signed parts (protected header, claims, signature) are an issued token's but whose
    envelope is spelled differently (untagged, another unprotected header) is counted as
    `envelope_variant`: the project accepts those on purpose (pycose interop)."""

    name = "engine"

    def setup(self, workdir: str) -> None:
        _quiet()
        from coupons.decision import Context
        from coupons.keys import PURPOSE_ISSUER
        from coupons.rules import Basket

        self.world = World(workdir)
        w = self.world
        issuer, _ = w.central._active(PURPOSE_ISSUER)
        self.inputs = TokenInputs(self.rng, w.tokens, w.codes, issuer)
        self.corpus = list(self.inputs.seeds_text)
        self.issued = Issued(w)
        ref = self.world.customer.hex()
        self.baskets = [
            Basket.from_dict({"currency": "CNY", "total_minor": 5000}),
            Basket.from_dict({"currency": "CNY", "total_minor": 5000, "customer": {"ref": ref}}),
            Basket.from_dict(
                {"currency": "CNY", "lines": [{"sku": "A", "unit_price_minor": 300, "quantity": 2}]}
            ),
        ]
        self.contexts = [Context(), Context(tag_uid=w.tag_uid), Context(source="nfc")]

    def teardown(self) -> None:
        self.world.close()

    def generate(self) -> str:
        return self.inputs.generate(self.corpus)

    def execute(self, text: str) -> Hashable:
        from coupons import tokens

        code = tokens.extract(text) or text.strip()
        d = self.world.engine.check(
            code, self.rng.choice(self.baskets), self.rng.choice(self.contexts)
        )
        if d.accepted:
            self.issued.verify(code, self)
        if text == self.inputs.last_strict:
            self.note("respelled")
            if d.reason.value != "malformed":
                raise FuzzFailure(f"a second spelling was {d.reason.value}, not malformed")
        return (d.accepted, d.reason.value)


# ---------------------------------------------------------------- ledger file reader


class LedgerImport(Target):
    """LedgerStore.import_file on a terminal already at the newest version: every fuzzed
    file is refused with LedgerRefused (or is a harmless "current"), nothing else is raised,
    and neither the ledger in memory nor the files on disk change."""

    name = "ledger"

    def setup(self, workdir: str) -> None:
        _quiet()
        from coupons import cose
        from coupons.ledger import ledger_file, sign_update

        self.world = World(workdir)
        w = self.world
        self.store = w.engine.ledger_store
        ups = w.updates
        self.files = [
            ledger_file(ups),
            ledger_file([w.snapshot]),
            ledger_file(ups[-1:]),
            ledger_file([*ups, w.snapshot]),
        ]
        self.updates = [*ups, w.snapshot]
        self.corpus = list(self.files)
        self.bytes = ByteMutator(self.rng, [b"format", b"updates", b"\x58\x40", b"\xd2\x84"])
        self.tree = TreeMutator(
            self.rng,
            cbor=True,
            keys=["format", "updates", "type", "version", "prev", "chain", "issued_at",
                  "signed_at", "campaigns", "policy", "plain_codes", "sun_keys", "usage",
                  "revoked", "redeemed", "issuer_certs", "deny_tags", 1, 4],
        )  # fmt: skip
        attacker = cose.SigningKey(bytes(32))
        cert, signed = cbor2.loads(ups[-1])
        body = cbor2.loads(cose.parse_sign1(signed).payload)
        self.attacker_update = sign_update(attacker, cert, dict(body, version=99))
        self.sign_update = sign_update
        self.attacker = attacker
        self.before = self._disk()

    def teardown(self) -> None:
        self.world.close()

    def _disk(self) -> list[tuple[str, int]]:
        d = self.store.dir
        return sorted((p, os.stat(os.path.join(d, p)).st_mtime_ns) for p in os.listdir(d))

    def generate(self) -> bytes:
        from coupons.ledger import ledger_file

        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return self.bytes.mutate(rng.choice(self.corpus), self.files)
        if r < 0.45:
            doc = cbor2.loads(rng.choice(self.files))
            return cbor_dumps(self.tree.mutate(doc)) or b""
        # One update mutated at its own level, in a well-formed file.
        updates = [rng.choice(self.updates) for _ in range(rng.randint(1, 3))]
        i = rng.randrange(len(updates))
        updates[i] = self._mutate_update(updates[i])
        return ledger_file(updates)

    def _mutate_update(self, raw: bytes) -> bytes:
        rng = self.rng
        cert, signed = cbor2.loads(raw)
        op = rng.randrange(5)
        if op == 0:
            return self.bytes.mutate(raw, self.updates)
        if op == 1:  # the certificate
            return cbor2.dumps([self.bytes.mutate(cert), signed])
        msg = cbor2.loads(signed)
        fields = list(msg.value)
        if op == 2:  # the envelope
            return cbor_dumps([cert, cbor_dumps(self.tree.mutate(msg)) or signed]) or raw
        body = self.tree.mutate(cbor2.loads(fields[2]))
        if op == 3:  # the body, signature left as it was
            fields[2] = cbor_dumps(body) or fields[2]
            return cbor2.dumps([cert, cbor2.dumps(cbor2.CBORTag(18, fields))])
        # the body signed by a key the root never certified, under the real certificate
        try:
            return self.sign_update(self.attacker, cert, body if isinstance(body, dict) else {})
        except Exception:
            return self.attacker_update

    def execute(self, data: bytes) -> Hashable:
        store = self.store
        state = store.state
        result = store.import_file(data)
        if result.applied:
            raise FuzzFailure(f"applied versions {result.applied} from a fuzzed file")
        if store.state is not state:
            raise FuzzFailure("the ledger in memory changed")
        if self.rng.random() < 0.05 and self._disk() != self.before:
            raise FuzzFailure("the ledger files on disk changed")
        kinds = tuple(sorted({e.kind for e in result.refused}))
        if kinds:
            self.note("refused")
        return kinds, tuple(e.detail[:30] for e in result.refused[:1]), bool(result.current)


# ---------------------------------------------------------------- basket reader


BASKET_SEEDS: list[dict[str, Any]] = [
    {"currency": "CNY", "total_minor": 12800},
    {"currency": "EUR", "total_minor": 0},
    {
        "currency": "CNY",
        "lines": [
            {"sku": "A1", "category": "food", "quantity": 2, "unit_price_minor": 350, "name": "x"},
            {"sku": "B2", "unit_price_minor": 10},
        ],
        "customer": {"ref": "00" * 16, "tier": "gold", "new": True},
    },
    {
        "currency": "USD",
        "lines": [{"sku": "A", "unit_price_minor": 100, "quantity": 3}],
        "total_minor": 300,
    },
]
BASKET_KEYS = [
    "currency", "lines", "total_minor", "customer", "sku", "category", "quantity",
    "unit_price_minor", "name", "ref", "tier", "new",
]  # fmt: skip


class BasketRead(Target):
    """Basket.from_dict on JSON documents (structure-mutated, or mutated JSON text that
    still parses): InputError or a basket whose money is a non-negative int. Every basket
    it reads then goes to engine.check with one coupon (a fixed, a percent, a typed code, a
    customer-bound one, one redeemed elsewhere, a forged one): never an exception, never the
    redeemed or forged one accepted, the customer-bound one only for its customer, and an
    accepted one in the basket's currency with a discount between 0 and the total."""

    name = "basket"

    def setup(self, workdir: str) -> None:
        _quiet()
        from coupons import cose, tokens
        from coupons.rules import Basket, InputError

        self.Basket, self.InputError = Basket, InputError
        self.world = World(workdir)
        w = self.world
        self.issued = Issued(w)
        forged = tokens.issue(
            cose.SigningKey(bytes(32)), tokens.Claims("TEN", 1, 1, 2**31, None, None)
        )
        self.coupons = [w.tokens[0], w.tokens[3], w.codes[0], w.tokens[5], w.tokens[2], forged]
        self.never = {w.tokens[2]: "redeemed elsewhere", forged: "forged"}
        self.bound = {w.tokens[5]: w.customer.hex()}
        seeds = [*BASKET_SEEDS, dict(BASKET_SEEDS[0], customer={"ref": w.customer.hex()})]
        self.corpus = [json.loads(json.dumps(s)) for s in seeds]
        self.tree = TreeMutator(self.rng, cbor=False, keys=BASKET_KEYS)
        self.bytes = ByteMutator(self.rng, [b'"', b":", b",", b"{", b"}", b"[", b"]", b"1e999"])

    def generate(self) -> Any:
        rng = self.rng
        seed = rng.choice(self.corpus)
        if rng.random() < 0.8:
            return self.tree.mutate(seed)
        text = self.bytes.mutate(json.dumps(seed).encode())
        try:
            return json.loads(text)
        except ValueError:
            return self.tree.mutate(seed)

    def execute(self, doc: Any) -> Hashable:
        try:
            b = self.Basket.from_dict(doc)
        except self.InputError as exc:
            return str(exc)[:50]
        total = b.total_minor
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise FuzzFailure(f"basket total {total!r}")
        for line in b.lines or ():
            if line.total_minor < 0:
                raise FuzzFailure(f"negative line {line!r}")
        self.note("valid")
        code = self.rng.choice(self.coupons)
        d = self.world.engine.check(code, b)
        if d.accepted:
            self.issued.verify(code, self)
            if code in self.never:
                raise FuzzFailure(f"accepted a {self.never[code]} coupon for {doc!r}")
            ref = b.customer.ref if b.customer else None
            if code in self.bound and ref != self.bound[code]:
                raise FuzzFailure(f"accepted a coupon bound to another customer for {doc!r}")
            if d.currency != b.currency:
                raise FuzzFailure(f"accepted a {d.currency} coupon on a {b.currency!r} basket")
            off = d.discount_minor
            if not isinstance(off, int) or isinstance(off, bool) or not 0 <= off <= total:
                raise FuzzFailure(f"discount {off!r} on a total of {total}")
        return ("ok", len(b.lines or ()), b.customer is not None, d.accepted, d.reason.value)

    def teardown(self) -> None:
        self.world.close()


# ---------------------------------------------------------------- NDEF reader


class _Tag:
    """The part of an nfcpy tag that NfcDriver._read touches."""

    type = "Type2Tag"
    is_present = True

    def __init__(self, octets: bytes) -> None:
        self.ndef = self
        self.octets = octets


class NdefRead(Target):
    """NfcDriver._read over a tag holding fuzzed NDEF bytes (relaxed ndeflib decoding and
    the coupon-record choice): returns, emits only byte payloads, never raises and never
    counts a library fault. Every scan it emits goes on, as in the daemon, to
    tokens.extract and engine.check (with the tag's UID): never an exception, and never an
    accept unless the payload carries an issued token (the seeds hold real ones, one of
    them bound to this tag)."""

    name = "ndef"

    def setup(self, workdir: str) -> None:
        _quiet()
        import ndef

        from coupons.rules import Basket
        from drivers.nfc.driver import NfcDriver
        from drivers.nfc.options import COUPON_MIME, NfcOptions

        self.driver = NfcDriver("nfc", NfcOptions(path="udp:127.0.0.1:9"))
        self.scans: list[Any] = []
        self.driver._sink = self.scans.append
        self.world = World(workdir)
        w = self.world
        self.issued = Issued(w)
        self.basket = Basket.from_dict({"currency": "CNY", "total_minor": 5000})
        tok = w.tokens[0]
        records = [
            [ndef.UriRecord("https://c.example/r?t=" + urllib.parse.quote(tok))],
            [ndef.UriRecord("https://c.example/r?" + urllib.parse.urlencode({"t": tok}))],
            [ndef.TextRecord(tok, "en")],
            [ndef.Record(COUPON_MIME, "", tok.encode())],
            [ndef.SmartposterRecord("https://c.example/x", title="coupon")],
            [ndef.TextRecord("hello"), ndef.UriRecord("tel:123"), ndef.Record("x/y", "1", b"z")],
            [ndef.Record(COUPON_MIME, "a", tok.encode()), ndef.TextRecord("for phones")],
            [ndef.Record(COUPON_MIME, "", w.tokens[6].encode())],  # bound to this tag
            [ndef.TextRecord(w.codes[0], "en")],
        ]
        seeds = [b"".join(ndef.message_encoder(rs)) for rs in records]
        # A chunked record, hand made (ndeflib writes none).
        seeds.append(b"\xb1\x01\x02U\x04h" + b"\x36\x00\x02ab" + b"\x56\x00\x01e")
        self.corpus = seeds
        self.seeds = list(seeds)
        self.bytes = ByteMutator(
            self.rng, [b"\xd1", b"\x91", b"\x51", b"\xb1", b"\x19", b"U", b"T", b"Sp", b"\x04"]
        )
        self.uid = w.tag_uid

    def teardown(self) -> None:
        self.world.close()

    def generate(self) -> bytes:
        rng = self.rng
        data = self.bytes.mutate(rng.choice(self.corpus), self.seeds)
        if rng.random() < 0.1:  # several messages' records run together
            data += self.bytes.mutate(rng.choice(self.seeds))
        return data

    def execute(self, octets: bytes) -> Hashable:
        self.scans.clear()
        before = self.driver.state.get().counters.get("read_faults", 0)
        if self.driver._read(_Tag(octets), self.uid) is not True:
            raise FuzzFailure("a tag that stayed on the reader was not read")
        counters = self.driver.state.get().counters
        if counters.get("read_faults", 0) != before:
            raise FuzzFailure("a library fault while reading")
        accepted = False
        for s in self.scans:
            if not isinstance(s.payload, bytes):
                raise FuzzFailure(f"payload {type(s.payload).__name__}")
            decided = decide_scan(self.world, s, self.basket)
            if decided is not None and decided[1].accepted:
                self.issued.verify(decided[0], self)
                accepted = True
        if self.scans:
            self.note("emitted", len(self.scans))
        records = tuple(sorted({s.meta["record"] for s in self.scans}))
        return records, len(self.scans) > 1, accepted


# ---------------------------------------------------------------- serial line framing


class SerialLines(Target):
    """LineSplitter and the driver's line clean-up over a fuzzed byte stream cut into
    random chunks: no exception, no line or scan longer than max_line, and the same lines
    however the stream is chunked. Every scan then goes, as in the daemon, to
    tokens.extract and engine.check: never an exception, and never an accept unless the
    line carries an issued token or code (the seeds hold real ones)."""

    name = "serial"

    def setup(self, workdir: str) -> None:
        _quiet()
        from coupons.rules import Basket
        from drivers.scan import HealthState
        from drivers.scanner.driver import LineSplitter, SerialScannerDriver
        from drivers.scanner.options import SerialOptions

        self.world = World(workdir)
        w = self.world
        self.issued = Issued(w)
        self.basket = Basket.from_dict({"currency": "CNY", "total_minor": 5000})
        self.options = [
            SerialOptions(port="/dev/null"),
            SerialOptions(port="/dev/null", terminator="\r", max_line=16),
            SerialOptions(port="/dev/null", terminator="\t", prefix="\x02", suffix="\x03"),
            SerialOptions(port="/dev/null", terminator="END", max_line=16, aim_id=True),
            SerialOptions(port="/dev/null", terminator="\x03\x03", max_line=32, prefix="]"),
        ]
        for o in self.options:
            o.check()
        self.LineSplitter, self.HealthState = LineSplitter, HealthState
        self.drivers = [SerialScannerDriver("s", o) for o in self.options]
        self.scans: list[Any] = []
        for d in self.drivers:
            d._sink = self.scans.append
        tok = w.tokens[0].encode()
        seeds = [
            tok + b"\r\n4006381333931\r\n" + w.codes[0].encode() + b"\r\n",
            b"\x00\x00\x02]Q1" + tok + b"\x03\t\x02short\x03\t",
            b"]E04006381333931END]Q1" + tok[:10] + b"ENDEN",
            b"A" * 40 + b"\r" + b"B" * 15 + b"\rC\n\n\r\n",
            b"abc\x03\x03" + b"x" * 33 + b"\x03" + b"\x03y\x03\x03",
        ]
        self.corpus = list(seeds)
        self.seeds = seeds
        self.bytes = ByteMutator(
            self.rng, [b"\r", b"\n", b"\r\n", b"\t", b"END", b"\x02", b"\x03", b"]Q1", b"\x00"]
        )

    def generate(self) -> tuple[int, bytes, tuple[int, ...]]:
        rng = self.rng
        data = self.bytes.mutate(rng.choice(self.corpus), self.seeds)
        if rng.random() < 0.1:
            data = data * rng.randint(2, 20)
        cuts = tuple(sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 12))))
        if rng.random() < 0.1:
            cuts = tuple(range(len(data)))  # a byte at a time, as a slow UART delivers
        return rng.randrange(len(self.options)), data, cuts

    def add(self, data: Any) -> None:
        super().add(data[1])  # the stream; options and cuts are drawn afresh

    def teardown(self) -> None:
        self.world.close()

    def _lines(self, which: int, chunks: list[bytes]) -> tuple[list[bytes], int]:
        state = self.HealthState()
        s = self.LineSplitter(self.options[which], state)
        out: list[bytes] = []
        for c in chunks:
            out += s.feed(c)
        s.reset()
        return out, state.get().counters.get("too_long", 0)

    def execute(self, job: tuple[int, bytes, tuple[int, ...]]) -> Hashable:
        which, data, cuts = job
        opts = self.options[which]
        bounds = [0, *cuts, len(data)]
        chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        lines, too_long = self._lines(which, chunks)
        whole, whole_too_long = self._lines(which, [data])
        if lines != whole:
            raise FuzzFailure(f"chunking changed the lines: {lines!r} != {whole!r}")
        if too_long != whole_too_long:
            raise FuzzFailure(f"chunking changed too_long: {too_long} != {whole_too_long}")
        self.scans.clear()
        for line in lines:
            if len(line) > opts.max_line:
                raise FuzzFailure(f"a {len(line)}-byte line passed max_line {opts.max_line}")
            self.drivers[which]._deliver(line)
        accepted = False
        for scan in self.scans:
            if not scan.payload or len(scan.payload) > opts.max_line:
                raise FuzzFailure(f"scan payload {scan.payload!r}")
            decided = decide_scan(self.world, scan, self.basket)
            if decided is not None and decided[1].accepted:
                self.issued.verify(decided[0], self)
                accepted = True
        if too_long:
            self.note("too_long")
        symbology = "symbology" in str(self.scans)
        return which, min(len(lines), 3), min(too_long, 2), symbology, accepted


# ---------------------------------------------------------------- POS API


class PosApi(Target):
    """The POS API in process (FastAPI TestClient) around a started daemon: fuzzed JSON
    bodies, raw bodies, paths, methods and headers. Never a 5xx, never a problem that is
    not problem+json, and never an accepted coupon that was not issued."""

    name = "pos"

    def setup(self, workdir: str) -> None:
        _quiet()
        from fastapi.testclient import TestClient

        from kiosk_ui import tills
        from terminal.daemon import config as config_mod
        from terminal.daemon.runner import Daemon
        from tests.test_daemon import fifo_input, write_config
        from tests.test_pos_api import make_app

        self.world = World(workdir)
        w = self.world
        w.engine.db.close()
        tmp = Path(workdir)
        body = "\n[kiosk]\nenabled = false\n" + fifo_input(tmp / "f")
        cfg = config_mod.load(write_config(tmp / "d.toml", w.data, body))
        self.daemon = Daemon(cfg, w.clock)
        self.daemon.start()
        logging.getLogger().setLevel(logging.CRITICAL)  # the daemon configured logging
        _quiet()
        self.token = tills.issue(w.data, "till1")
        # As the Pi's own till would: from 127.0.0.1, naming 127.0.0.1 (kiosk_ui/guard.py).
        self.client = TestClient(
            make_app(self.daemon), base_url="http://127.0.0.1", client=("127.0.0.1", 50000)
        )
        self.inputs = TokenInputs(self.rng, w.tokens, w.codes)
        self.token_corpus = list(self.inputs.seeds_text)
        self.issued = Issued(w)
        self.tree = TreeMutator(
            self.rng, cbor=False, keys=[*BASKET_KEYS, "basket", "cashier", "code"]
        )
        self.bytes = ByteMutator(self.rng, [b'"', b"{", b"}", b"[", b"]", b":", b","])
        self.checkouts = [self._open(f"seed-{i}") for i in range(3)]
        self.corpus = [
            {"basket": {"currency": "CNY", "total_minor": 12800}},
            {"basket": BASKET_SEEDS[2], "cashier": "ann"},
            {"code": w.tokens[0]},
            {"code": w.codes[0]},
        ]
        self.n = 0

    def add(self, data: Any) -> None:
        if isinstance(data[4], dict):
            super().add(data[4])  # the document; path, method and headers are drawn afresh

    def _open(self, key: str) -> str:
        r = self.client.post(
            "/api/v1/checkouts",
            json={"basket": {"currency": "CNY", "total_minor": 12800}},
            headers=self._auth() | {"Idempotency-Key": key},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["checkout_id"])

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def teardown(self) -> None:
        self.client.close()
        self.daemon.stop()
        self.world.central.db.close()

    def generate(self) -> tuple[str, str, dict[str, str], bytes | None, Any]:
        rng = self.rng
        self.n += 1
        cid = rng.choice((*self.checkouts, "nope", "a" * 65, "%2e%2e", "..", "x y", "\u00e9", ""))
        path = rng.choice(
            (
                "/api/v1/checkouts",
                f"/api/v1/checkouts/{cid}",
                f"/api/v1/checkouts/{cid}/coupons",
                f"/api/v1/checkouts/{cid}/coupons",
                f"/api/v1/checkouts/{cid}/coupons",
                f"/api/v1/checkouts/{cid}/commit",
                f"/api/v1/checkouts/{cid}/release",
                f"/api/v1/checkouts/{cid}/reverse",
                "/api/v1/",
                "/api/v1/checkouts//coupons",
            )
        )
        method = rng.choice(("POST",) * 6 + ("GET", "GET", "PUT", "DELETE", "PATCH"))
        headers: dict[str, str] = {}
        if rng.random() < 0.9:
            headers |= self._auth()
        elif rng.random() < 0.5:
            headers["Authorization"] = rng.choice(
                ("Bearer", "Bearer x", "Basic Zm9vOmJhcg==", "bearer " + self.token[:-1], "")
            )
        if rng.random() < 0.9:
            headers["Idempotency-Key"] = rng.choice(
                (f"k{self.n}", f"k{self.n}", "dup", "", "a" * 129, "\u00e9", "k y")
            )
        if rng.random() < 0.2:
            headers["Content-Type"] = rng.choice(
                ("text/plain", "application/json; charset=latin-1", "multipart/form-data", "")
            )
        if rng.random() < 0.05:
            headers["Accept-Language"] = rng.choice(("zh", "xx", ";;;", "*"))
        doc: Any
        if path.endswith("/coupons") and rng.random() < 0.7:
            doc = {"code": self.inputs.generate(self.token_corpus)}
            if rng.random() < 0.1:
                doc = self.tree.mutate(doc)
        else:
            doc = self.tree.mutate(rng.choice(self.corpus))
        raw: bytes | None = None
        if rng.random() < 0.15:
            raw = self.bytes.mutate(json.dumps(doc).encode())
            if rng.random() < 0.05:
                raw = b"{" + b" " * (70 * 1024) + b"}"
        return method, path, headers, raw, doc

    def execute(self, req: tuple[str, str, dict[str, str], bytes | None, Any]) -> Hashable:
        method, path, headers, raw, doc = req
        try:
            content = raw if raw is not None else json.dumps(doc).encode()
        except ValueError:
            content = b"{}"
        sent = {k: v.encode("utf-8") for k, v in headers.items()}  # raw bytes on the wire
        sent.setdefault("Content-Type", b"application/json")
        r = self.client.request(method, path, content=content, headers=sent)
        if r.status_code >= 500:
            raise FuzzFailure(f"{r.status_code} for {method} {path}: {r.text[:300]}")
        ctype = r.headers.get("content-type", "")
        if r.status_code >= 400 and path.startswith("/api/v1/") and "json" not in ctype:
            raise FuzzFailure(f"{r.status_code} {ctype!r} is not problem+json: {r.text[:200]}")
        if r.status_code == 200 and path.endswith("/coupons") and method == "POST":
            decision = r.json()["decision"]
            if decision["accepted"]:
                self._check_accepted(doc)
        return method, path.rsplit("/", 1)[-1][:12], r.status_code

    def _check_accepted(self, doc: Any) -> None:
        from coupons import tokens

        code = tokens.extract(doc["code"]) or doc["code"].strip()
        self.issued.verify(code, self)


TARGETS: dict[str, type[Target]] = {
    t.name: t
    for t in (
        TokenText,
        EngineCheck,
        LedgerImport,
        BasketRead,
        NdefRead,
        SerialLines,
        PosApi,
        ConfigLoad,
        JournalUpload,
    )
}


def make_target(name: str, rng: random.Random) -> Target:
    return TARGETS[name](rng)


__all__ = ["TARGETS", "make_target"]
