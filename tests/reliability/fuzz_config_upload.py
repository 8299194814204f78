"""Issue 11's fuzz targets: the daemon's TOML config (`config`) and the central's journal
upload from an enrolled till (`upload`). Registered in fuzz_targets.TARGETS."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import urllib.parse
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from tests.reliability.fuzz_engine import FuzzFailure, Target, TextMutator

# ---------------------------------------------------------------- config


def _quiet() -> None:
    for name in ("terminal", "drivers", "kiosk_ui", "sync", "peewee"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


CONFIG_SEEDS: list[dict[str, Any]] = [
    {"terminal": {"data": "/tmp/d"}, "input": [{"name": "f", "kind": "fake", "payloads": ["a"]}]},
    {
        "terminal": {"data": "/var/lib/edge-redeem", "lang": "en", "mode": "standalone"},
        "input": [
            {"name": "cam", "kind": "camera", "source": "/dev/video0", "width": 1280},
            {"name": "scanner", "kind": "serial", "port": "/dev/ttyACM0", "enabled": False},
            {"name": "nfc", "kind": "nfc", "path": "usb", "enabled": False},
        ],
        "output": [{"name": "pole", "kind": "pole-display", "port": "/dev/ttyUSB0"}],
        "kiosk": {"host": "127.0.0.1", "port": 8080},
        "sync": {"interval_s": 60},
        "watchdog": {"restart_budget": 5, "window_s": 600},
        "log": {"format": "auto", "level": "INFO"},
    },
    {
        "terminal": {"data": "/d", "mode": "pos", "void_window_s": 300.0, "cashier": "ann"},
        "kiosk": {
            "host": "0.0.0.0",
            "port": 8443,
            "allow_network": True,
            "allowed_clients": ["192.168.1.0/24", "10.0.0.7/32"],
            "hostnames": ["till-3.store.lan"],
        },
        "input": [{"name": "n", "kind": "nfc", "path": "udp:127.0.0.1:54321"}],
    },
    {
        "terminal": {"data": "/d", "lang": "zh_CN"},
        "sync": {
            "central": "https://central.example:8443",
            "interval_s": 30,
            "connect_timeout_s": 5.0,
            "retry_base_s": 2,
            "max_backoff_s": 300,
        },
        "input": [
            {"name": "s", "kind": "serial", "port": "/dev/ttyUSB1", "read_timeout_s": 0.5},
            {"name": "c", "kind": "camera", "source": 0, "stall_s": 5, "debounce_s": 1},
            {"name": "f", "kind": "fake", "fifo": "/run/f", "interval_s": 0.1},
        ],
        "log": {"device_traffic": True},
    },
]
# Values a person or a broken tool writes into a config: non-finite, negative, zero, port
# overflows, integers past 64 bits and past a float, wrong types, network addresses.
CONFIG_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, -1, -0.5, 0, 0.0, 1, 65535, 65536, 99999, -(2**63),
    2**63 - 1, 2**63, 10**30, 10**400, 1e308, "x", "", "0.0.0.0", "::", "10.0.0.1",
    "192.168.1.10", "example.com", "localhost", "127.0.0.2", "::1", "[::1]", True, False,
    [], [1], ["a"], [math.nan], ["192.168.1.0/24"], ["10.0.0.0/33"], [""], {}, {"a": 1},
    "https://central.example:99999", "https://central.example:0", "https://c:x",
    "udp:127.0.0.1:65536", "udp:127.0.0.1:99999", "udp:127.0.0.1:0", "udp:127.0.0.1:\u00b2",
    "udp:127.0.0.1:\u0663", "usb", "/dev/ttyS0", "DEBUG", "zh_CN", "pos",
]  # fmt: skip
CONFIG_KEYS = [
    "host", "port", "allow_network", "allowed_clients", "hostnames", "enabled", "central",
    "interval_s", "void_window_s", "window_s", "stall_s", "debounce_s", "read_timeout_s",
    "reconnect_min_s", "reconnect_max_s", "max_backoff_s", "restart_budget", "data", "mode",
    "unknown_key", "port_", "Host",
]  # fmt: skip
TOML_WORDS = ["[kiosk]", "[[input]]", "[sync]", " = ", "nan", "inf", "-inf", '"', "'''", "\n"]
TOML_WORDS += ["0x", "1e999", "{", "}", "[", "]", ",", "#", "port", "host", "9" * 40]
DURATION_SUFFIXES = ("_s", "_ms", "_hours")


def _toml_key(key: str) -> str:
    plain = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if plain else json.dumps(key, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items())
        return "{ " + inner + " }"
    return '""'


def to_toml(doc: dict[str, Any]) -> str:
    """A document as TOML text (tomllib writes none): scalars first, then tables."""
    head, tables = [], []
    for top, value in doc.items():
        if isinstance(value, dict):
            tables.append(f"\n[{_toml_key(top)}]")
            tables += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            for t in value:
                tables.append(f"\n[[{_toml_key(top)}]]")
                tables += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in t.items()]
        elif value is not None:
            head.append(f"{_toml_key(top)} = {_toml_value(value)}")
    return "\n".join(head + tables) + "\n"


class _MemoryFile(type(Path())):  # type: ignore[misc]
    """A path whose text is held in memory: config.load reads it as it reads a file (a
    write and a read per input on a loaded SD card or CI disk was most of the time)."""

    data = b""

    def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        return self.data.decode(encoding or "utf-8", errors or "strict")


class ConfigLoad(Target):
    """terminal.daemon.config.load on TOML mutated from valid configs (values swapped for
    non-finite, negative, zero, out-of-range, huge, wrong-typed ones; unknown keys; network
    hosts; and garbled text). Either ConfigError naming the file and a key, or a Config
    whose every port is 1..65535, every duration a finite number >= 0, and whose kiosk
    serves only loopback unless allow_network with allowed_clients."""

    name = "config"

    def setup(self, workdir: str) -> None:
        _quiet()
        from terminal.daemon import config

        self.config = config
        self.path = _MemoryFile(workdir, "terminal.toml")
        self.seeds = [to_toml(d) for d in CONFIG_SEEDS]
        self.corpus = [copy.deepcopy(d) for d in CONFIG_SEEDS]
        self.text = TextMutator(
            self.rng, "abcdefghijklmnopqrstuvwxyz0123456789_.=[]\"' -+\n", TOML_WORDS
        )

    def generate(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.03:
            return rng.choice(self.seeds)
        if r < 0.04:  # what tomllib itself cannot take: deep nesting, a 5000-digit number
            n = rng.choice((100, 5000))
            bad = rng.choice(("[" * n, "{ a = " * n, "9" * n, "0x" + "f" * n, "1e" + "9" * n))
            return rng.choice(self.seeds) + f"\n[sync]\ninterval_s = {bad}\n"
        doc = copy.deepcopy(rng.choice(self.corpus))
        for _ in range(rng.randint(1, 2)):
            self._mutate(doc)
        text = to_toml(doc)
        if rng.random() < 0.2:
            text = self.text.mutate(text, self.seeds)
        return text

    def add(self, data: Any) -> None:
        pass  # the corpus holds documents; the seeds' shapes are enough to mutate from

    def _tables(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        out = [v for v in doc.values() if isinstance(v, dict)]
        for v in doc.values():
            if isinstance(v, list):
                out += [t for t in v if isinstance(t, dict)]
        return out

    def _mutate(self, doc: dict[str, Any]) -> None:
        rng = self.rng
        op = rng.randrange(10)
        tables = self._tables(doc)
        if op == 0 or not tables:  # a section, an input or an unknown section more
            which = rng.choice(("kiosk", "sync", "watchdog", "log", "input", "nope", "terminal"))
            if which == "input":
                kind = rng.choice(("fake", "serial", "camera", "nfc", "nope", ""))
                extra = {
                    "serial": {"port": "/dev/ttyS0"},
                    "camera": {"source": 0},
                    "nfc": {"path": "udp:127.0.0.1:" + str(rng.choice(CONFIG_VALUES))},
                }
                name = rng.choice(("i", "f", "cam", "n"))
                doc.setdefault("input", []).append(
                    {"name": name, "kind": kind, **extra.get(kind, {})}
                )
            else:
                doc.setdefault(which, {})[rng.choice(CONFIG_KEYS)] = rng.choice(CONFIG_VALUES)
            return
        table = rng.choice(tables)
        if op <= 4 and table:  # swap a value
            table[rng.choice(list(table))] = rng.choice(CONFIG_VALUES)
        elif op == 5:  # a key, known somewhere or not
            table[rng.choice(CONFIG_KEYS)] = rng.choice(CONFIG_VALUES)
        elif op == 6 and table:
            del table[rng.choice(list(table))]
        elif op == 7:  # the kiosk opened to the network, with or without its conditions
            k = doc.setdefault("kiosk", {})
            k["host"] = rng.choice(("0.0.0.0", "192.168.1.5", "::", "till.lan", "127.0.0.1", ""))
            if rng.random() < 0.6:
                k["allow_network"] = rng.choice((True, False, 1, "true"))
            if rng.random() < 0.6:
                k["allowed_clients"] = rng.choice(([], ["192.168.1.0/24"], ["x"], "10.0.0.0/8"))
        elif op == 8:  # a port in a URL or a udp: path
            if rng.random() < 0.5:
                doc.setdefault("sync", {})["central"] = "https://c.example:" + str(
                    rng.choice((0, 1, 443, 65535, 65536, 99999, -1, "", "x", 10**20))
                )
            else:
                doc.setdefault("input", []).append(
                    {
                        "name": "u",
                        "kind": "nfc",
                        "path": f"udp:127.0.0.1:{rng.choice(CONFIG_VALUES)}",
                    }
                )
        else:  # a nested value where a scalar belongs
            if table:
                key = rng.choice(list(table))
                table[key] = rng.choice(([table[key]], {"v": table[key]}, [[table[key]]]))

    def execute(self, text: str | bytes) -> Hashable:
        config = self.config
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        self.path.data = raw  # bytes as such: atheris' inputs, invalid UTF-8 included
        try:
            cfg = config.load(self.path)
        except config.ConfigError as exc:
            if str(self.path) not in str(exc) or not exc.key:
                raise FuzzFailure(f"a config error naming no file or key: {exc}") from None
            self.note("refused")
            return "error", exc.key.split(".")[-1].split("[")[0][:20]
        self.note("loaded")
        self._check(cfg)
        k = cfg.kiosk
        return "ok", k.allow_network, len(cfg.inputs), bool(cfg.sync.central)

    def _check(self, cfg: Any) -> None:
        k = cfg.kiosk
        if not (isinstance(k.port, int) and not isinstance(k.port, bool) and 1 <= k.port <= 65535):
            raise FuzzFailure(f"kiosk.port {k.port!r} loaded")
        if not self.config.is_loopback(k.host) and not (k.allow_network and k.allowed_clients):
            raise FuzzFailure(f"kiosk.host {k.host!r} loaded without allow_network and clients")
        if cfg.sync.central is not None:
            try:
                port = urllib.parse.urlsplit(cfg.sync.central).port
            except ValueError as exc:
                raise FuzzFailure(f"sync.central {cfg.sync.central!r} loaded: {exc}") from None
            if port is not None and not 1 <= port <= 65535:
                raise FuzzFailure(f"sync.central {cfg.sync.central!r} loaded with port {port}")
        objects: list[tuple[str, Any]] = [
            (n, getattr(cfg, n)) for n in ("terminal", "kiosk", "sync", "watchdog", "log")
        ]
        objects += [(f"input.{i.name}", i.options) for i in cfg.inputs]
        objects += [(f"output.{o.name}", o) for o in cfg.outputs]
        for where, obj in objects:
            for f in dataclasses.fields(obj):
                if f.name.endswith(DURATION_SUFFIXES):
                    self._duration(f"{where}.{f.name}", getattr(obj, f.name))
            peer = getattr(obj, "udp_peer", None)
            if peer is not None and not 1 <= peer[1] <= 65535:
                raise FuzzFailure(f"{where}: udp port {peer[1]} loaded")

    @staticmethod
    def _duration(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FuzzFailure(f"{key} = {value!r} loaded as a duration")
        try:
            seconds = float(value)
        except OverflowError:
            raise FuzzFailure(f"{key} = {value} loaded: too large for any clock") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise FuzzFailure(f"{key} = {value!r} loaded")


# ---------------------------------------------------------------- journal upload


CAMPAIGNS: list[dict[str, Any]] = [
    {"id": "FIX", "kind": "fixed", "amount_minor": 1000},
    {"id": "THR", "kind": "threshold", "amount_minor": 2000, "min_spend_minor": 10000},
    {"id": "PCT", "kind": "percent", "percent": 10, "cap_minor": 500},
    {"id": "PCU", "kind": "percent", "percent": 15},
    {"id": "GIFT", "kind": "gift", "gift_sku": "TOTE", "gift_value_minor": 800},
    {"id": "EUR1", "kind": "fixed", "amount_minor": 300, "currency": "EUR"},
    {"id": "S9ONLY", "kind": "fixed", "amount_minor": 700, "stores": ["S9"]},
    {"id": "TWICE", "kind": "fixed", "amount_minor": 100, "uses_per_coupon": 2,
     "budget_count": 3, "reusable_after_refund": False},
]  # fmt: skip
AMOUNT_LIMIT = 10**12  # what the central may believe of one entry (sync/central/trust.py)
UPLOAD_FIELDS = (
    "kind", "accepted", "campaign", "serial", "discount_minor", "currency", "detail",
    "checkout_id", "customer", "reason",
)  # fmt: skip


def parse_serial(text: Any) -> int | None:
    """The serial a journal row names, read as the central reads it (16 characters, hex)."""
    if not isinstance(text, str) or len(text) != 16:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


class JournalUpload(Target):
    """The central's journal ingest (parse_batch, then ingest, as POST /v1/journal does)
    for one enrolled till, in process. Each input is a batch that continues the till's
    hash chain correctly but carries fuzzed values (discounts negative, huge, fractional,
    non-finite; unknown campaigns; serials never issued or issued for another campaign;
    currencies, kinds, accepted flags, basket totals in detail). Either BatchInvalid with a
    4xx status (nothing stored), or every entry stored; and after each batch, campaign
    usage counts and values are never negative, never above what the plausible entries
    could add (their campaign's most each), a use the central did not count carries an
    `implausible_entry` flag naming the terminal, and an implausible one is never counted."""

    name = "upload"

    def setup(self, workdir: str) -> None:
        _quiet()
        from coupons import cose
        from coupons.clock import FixedClock
        from coupons.journal import GENESIS_HASH, entry_hash
        from coupons.rules import Campaign
        from sync.central import ingest as ingest_mod
        from sync.central.store import Central
        from sync.central.terminals import enroll, new_enroll_code
        from tests.conftest import T0
        from tests.master_key import KEY as MASTER_KEY

        self.ingest_mod, self.entry_hash = ingest_mod, entry_hash
        self.clock = FixedClock(T0)
        self.central = c = Central.init(
            Path(workdir) / "central", self.clock.now, master_key=MASTER_KEY
        )
        self.campaigns: dict[str, Campaign] = {}
        self.serials: dict[str, list[str]] = {}
        for doc in CAMPAIGNS:
            camp = c.add_campaign({"currency": "CNY", "stacking": "any", **doc})
            self.campaigns[camp.id] = camp
            self.serials[camp.id] = [f"{i.serial:016x}" for i in c.issue(camp.id, 3)]
        code, _ = new_enroll_code(c, "S1", 3600)
        self.terminal = enroll(c, code, cose.SigningKey(bytes(range(32))).public).terminal
        self.seq, self.head = 0, GENESIS_HASH
        self.bound: dict[str, list[int]] = {}  # campaign -> [count, minor] plausible at most
        f, p = self.serials["FIX"], self.serials["PCU"]
        self.seeds: list[list[dict[str, Any]]] = [
            [{"kind": "redeem", "campaign": "FIX", "serial": f[0], "discount_minor": 1000}],
            [
                {"kind": "hold", "campaign": "PCU", "serial": p[0], "checkout_id": "co1",
                 "discount_minor": 750, "detail": json.dumps({"basket_minor": 5000})},
                {"kind": "commit", "campaign": "PCU", "serial": p[0], "checkout_id": "co1",
                 "discount_minor": 750},
                {"kind": "reverse", "campaign": "PCU", "serial": p[0], "checkout_id": "co1",
                 "discount_minor": 750},
            ],
            [{"kind": "redeem", "campaign": "GIFT", "serial": self.serials["GIFT"][0],
              "discount_minor": 0, "detail": json.dumps({"gift": True, "basket_minor": 20000})}],
            [{"kind": "redeem", "campaign": "FIX", "serial": f[1], "discount_minor": -1000000}],
            [{"kind": "flag", "reason": "replay", "detail": json.dumps({"about_seq": 1})}],
        ]  # fmt: skip
        self.corpus = [copy.deepcopy(s) for s in self.seeds]

    def teardown(self) -> None:
        self.central.close()

    # -------------------------------------------------------------- inputs

    def _menu(self, field: str, entry: dict[str, Any]) -> Any:
        rng = self.rng
        cids = list(self.campaigns)
        if field == "kind":
            return rng.choice(("redeem",) * 5 + ("commit", "commit", "hold", "reverse", "flag",
                                                "ledger", "check", "Redeem", ""))  # fmt: skip
        if field == "accepted":
            return rng.choice((True,) * 6 + (False, 1, 0, None, "true"))
        if field == "campaign":
            return rng.choice((*cids, *cids, "NOPE", "", None, "fix", "FIX "))
        if field == "serial":
            own = self.serials.get(entry.get("campaign") or "", [])
            anyone = rng.choice(list(self.serials.values()))
            pick = rng.choice(own or anyone)
            return rng.choice(
                (pick, pick, rng.choice(anyone), "00000000deadbeef", f"{rng.getrandbits(64):016x}",
                 pick.upper(), " " + pick[1:], "0x" + pick[2:], pick[:15], pick + "0", "", None,
                 "zzzzzzzzzzzzzzzz")
            )  # fmt: skip
        if field == "discount_minor":
            camp = self.campaigns.get(entry.get("campaign") or "")
            most = camp.amount_minor if camp else 1000
            return rng.choice(
                (most, most, 0, 1, most + 1, -1, -1000000, 2**62, 2**62 + 1, 2**63, AMOUNT_LIMIT,
                 AMOUNT_LIMIT + 1, 1.5, 500.0, math.nan, math.inf, -math.inf, True, "100", None)
            )  # fmt: skip
        if field == "currency":
            return rng.choice(("CNY", "CNY", "CNY", "EUR", None, "cny", "", "USD", 1))
        if field == "detail":
            doc: dict[str, Any] = {}
            if rng.random() < 0.7:
                doc["basket_minor"] = rng.choice(
                    (5000, 20000, 0, -1, AMOUNT_LIMIT, AMOUNT_LIMIT + 1, 1.5, "5000", None, True,
                     math.inf)
                )  # fmt: skip
            if rng.random() < 0.3:
                doc["gift"] = rng.choice((True, False, 1, "yes"))
            if rng.random() < 0.1:
                doc["tag"] = rng.choice(("04a2c31d5e6f80", "zz", 7))
            return rng.choice((json.dumps(doc),) * 6 + ("not json", "[]", "null", "{", 5))
        if field == "checkout_id":
            return rng.choice((None, "co1", "co2", "co3"))
        if field == "customer":
            return rng.choice((None, None, "ab" * 16, "cd" * 16))
        return rng.choice(("ok", "replay", "expired", ""))

    def generate(self) -> list[dict[str, Any]]:
        rng = self.rng
        batch = copy.deepcopy(rng.choice(self.corpus))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(8)
            if op == 0 or not batch:  # a new entry, its fields drawn in order
                entry: dict[str, Any] = {}
                for field in UPLOAD_FIELDS:
                    if rng.random() < 0.7:
                        entry[field] = self._menu(field, entry)
                batch.insert(rng.randrange(len(batch) + 1), entry)
            elif op == 1 and len(batch) > 1:
                del batch[rng.randrange(len(batch))]
            else:  # one field of one entry
                entry = rng.choice(batch)
                field = rng.choice(UPLOAD_FIELDS)
                entry[field] = self._menu(field, entry)
        return batch[:8]

    def _chain(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The batch as the till's next journal rows: numbered on, hashed, chained."""
        prev, out = self.head, []
        for n, fields in enumerate(batch, start=self.seq + 1):
            e: dict[str, Any] = {
                "seq": n, "at_ms": 1_795_608_000_000 + n, "kind": "redeem", "op_id": None,
                "checkout_id": None, "accepted": True, "reason": "ok", "campaign": None,
                "serial": None, "customer": None, "discount_minor": 0, "currency": "CNY",
                "cashier": "ann", "source": "fuzz", "detail": "{}",
                **{k: v for k, v in fields.items() if k in UPLOAD_FIELDS}, "prev_hash": prev,
            }  # fmt: skip
            try:
                e["hash"] = self.entry_hash(e)
            except (TypeError, ValueError):  # a value no till could hash; refused anyway
                e["hash"] = "0" * 64
            prev = e["hash"]
            out.append(e)
        return out

    # -------------------------------------------------------------- the contract

    def execute(self, batch: list[dict[str, Any]]) -> Hashable:
        from sync.central.models import FlagRow, Redemption

        m = self.ingest_mod
        entries = self._chain(batch)
        body = json.dumps({"entries": entries}).encode()  # Python writes NaN, as a till might
        with self.central.session():
            try:
                parsed = m.parse_batch(body)
            except m.BatchInvalid as exc:
                if not 400 <= exc.status < 500:
                    raise FuzzFailure(f"BatchInvalid with status {exc.status}") from None
                m.flag_refused_batch(self.central, self.terminal, body, exc)
                self.note("batch_refused")
                self._check_usage()
                return "refused", exc.code
            reply = m.ingest(self.central, self.terminal, parsed)
            if reply.problem is not None or reply.acked_seq != self.seq + len(entries):
                raise FuzzFailure(
                    f"a well-chained batch was not stored: problem={reply.problem!r} "
                    f"acked={reply.acked_seq} expected {self.seq + len(entries)}"
                )
            self.seq, self.head = reply.acked_seq, parsed[-1]["hash"]
            outcome = []
            for e in parsed:
                plausible = self._plausible(e)
                if plausible is None:
                    outcome.append("-")
                    continue
                counted = Redemption.get_or_none(
                    (Redemption.terminal == self.terminal) & (Redemption.seq == e["seq"])
                )
                flag = FlagRow.get_or_none(
                    (FlagRow.kind == "implausible_entry")
                    & (FlagRow.terminal == self.terminal)
                    & (FlagRow.seq == e["seq"])
                )
                if counted is None and (flag is None or self.terminal not in flag.detail):
                    raise FuzzFailure(f"entry {e['seq']} neither counted nor flagged: {e}")
                if counted is not None and not plausible:
                    raise FuzzFailure(f"counted entry {e['seq']} the central cannot believe: {e}")
                self.note("counted" if counted is not None else "flagged")
                outcome.append("c" if counted is not None else "f")
            self._check_usage(reply.usage)
        return "stored", "".join(outcome)

    def _plausible(self, e: dict[str, Any]) -> bool | None:
        """None: not a countable use (the central counts nothing for it, nor must it flag);
        else whether the central may believe it; a believable use adds to the bound."""
        if e["kind"] not in ("redeem", "commit") or e["accepted"] is not True:
            return None
        serial = parse_serial(e["serial"])
        if serial is None:
            return None
        cid = e["campaign"]
        camp = self.campaigns.get(cid) if isinstance(cid, str) else None
        if camp is None or (camp.stores and "S1" not in camp.stores):
            return False
        if serial not in {int(s, 16) for s in self.serials[camp.id]}:
            return False
        if e["currency"] is not None and e["currency"] != camp.currency:
            return False
        d = e["discount_minor"]
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= AMOUNT_LIMIT:
            return False
        if camp.kind == "percent":  # a basket (here or in the hold) bounds it: be generous
            most = AMOUNT_LIMIT * camp.percent_bp // 10_000
            most = min(most, camp.cap_minor) if camp.cap_minor is not None else most
        elif camp.kind == "gift":
            most = camp.gift_value_minor
        else:
            most = camp.amount_minor
        if d > most:
            return False
        bound = self.bound.setdefault(camp.id, [0, 0])
        bound[0] += 1
        bound[1] += most + camp.gift_value_minor
        return True

    def _check_usage(self, reply_usage: dict[str, list[int]] | None = None) -> None:
        from sync.central.models import CampaignUsage, TerminalUsage

        for row in [*CampaignUsage.select(), *TerminalUsage.select()]:
            count, minor = int(row.count), int(row.minor)
            most = self.bound.get(row.campaign, [0, 0])
            if count < 0 or minor < 0:
                raise FuzzFailure(f"usage of {row.campaign!r} went negative: {count}, {minor}")
            if count > most[0] or minor > most[1]:
                raise FuzzFailure(
                    f"usage of {row.campaign!r} is {count} uses, {minor} minor: more than the "
                    f"plausible entries could add ({most[0]}, {most[1]})"
                )
        for cid, (count, minor) in (reply_usage or {}).items():
            if count < 0 or minor < 0:
                raise FuzzFailure(f"the reply's usage of {cid!r} is negative: {count}, {minor}")
