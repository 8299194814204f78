"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the targets in fuzz_targets.py, one
target per process:

    python -m tests.reliability.atheris_main TARGET [libFuzzer flags] [CRASH_FILE]

The project's packages (terminal, drivers, sync, kiosk_ui) are instrumented as the target
imports them, so libFuzzer keeps an input when it reaches new code. The target's seeds and
a dictionary are written to a work directory ($REDEEM_ATHERIS_WORKDIR, else a new temporary
one) and passed to libFuzzer. Given a crash file instead, it replays that one input and
prints the traceback. The world (keys, serials, codes) is the same on every run, so a crash
file written by the test reproduces here."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.reliability.fuzz_engine import Target
from tests.reliability.fuzz_targets import BASKET_KEYS, TARGETS

PACKAGES = ["terminal", "drivers", "sync", "kiosk_ui"]
WORLD_SEED = 20261127
FORMS = 3  # tokens/engine inputs: text, raw COSE, zlib'd COSE (the first byte chooses)
SKIP = object()  # an input too short to make one of the target's inputs
POS_METHODS = ("POST", "POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH")


@contextlib.contextmanager
def fixed_randomness(seed: int) -> Iterator[None]:
    """The central's keys, serials, codes and salts drawn from one seed while the target is
    set up, so a crash file replays against the same issued tokens."""
    from coupons import cose

    rng = random.Random(seed)
    saved_generate = cose.SigningKey.__dict__["generate"]
    drawn: dict[str, Callable[..., Any]] = {
        "randbits": rng.getrandbits,
        "choice": rng.choice,
        "token_hex": lambda n=32: rng.randbytes(n).hex(),
        "token_bytes": lambda n=32: rng.randbytes(n),
    }
    saved = {name: getattr(secrets, name) for name in drawn}

    def generate(cls: type[cose.SigningKey]) -> cose.SigningKey:
        return cls(rng.randbytes(32))

    cose.SigningKey.generate = classmethod(generate)  # type: ignore[assignment,method-assign]
    for name, value in drawn.items():
        setattr(secrets, name, value)
    try:
        yield
    finally:
        cose.SigningKey.generate = saved_generate  # type: ignore[method-assign]
        for name, value in saved.items():
            setattr(secrets, name, value)


# ---------------------------------------------------------------- bytes -> a target's input


class Adapter:
    """Turns libFuzzer's bytes into the input a Target.execute takes (SKIP: none), and
    the target's own seeds into bytes."""

    dictionary: list[bytes] = []

    def __init__(self, target: Any) -> None:
        self.target = target

    def seeds(self) -> list[bytes]:
        return [bytes(s) for s in self.target.seeds]

    def decode(self, data: bytes) -> Any:
        return data


class TextAdapter(Adapter):
    """tokens, engine: byte 0 picks the form; text is UTF-8 (bad bytes become lone
    surrogates), COSE bytes are base45-encoded (zlib'd first in form 2) behind CPN1:."""

    dictionary = [b"CPN1:", b"cpn1:", b"https://c.example/r?t=", b"%3A", b"%", b"-", b" "]
    dictionary += [b"\xd2", b"\x84", b"\x58\x40", b"\xa0", b"\x78\x9c", b"\x01", b"\x04"]

    def seeds(self) -> list[bytes]:
        inputs = self.target.inputs
        out = [b"\x00" + t.encode() for t in inputs.seeds_text]
        out += [b"\x01" + c for c in inputs.cose_seeds]
        out += [b"\x02" + c for c in inputs.cose_seeds[:3]]
        return out

    def decode(self, data: bytes) -> Any:
        from coupons import base45, tokens

        form, body = (data[0] % FORMS, data[1:]) if data else (0, b"")
        if form == 0:
            return body.decode("utf-8", "surrogateescape")
        if form == 2:
            body = zlib.compress(body)
        return tokens.PREFIX + base45.encode(body)


class LedgerAdapter(Adapter):
    dictionary = [b"format", b"updates", b"version", b"prev", b"chain", b"revoked"]
    dictionary += [b"redeemed", b"campaigns", b"\x58\x40", b"\xd2\x84", b"\xa0", b"\x80"]

    def seeds(self) -> list[bytes]:
        return list(self.target.files)


class JsonAdapter(Adapter):
    """basket: bytes that are JSON text are the document; other bytes (most of what
    libFuzzer's mutations make of JSON) build one through atheris' FuzzedDataProvider, so
    every input reaches the reader."""

    dictionary = [b'"', b":", b",", b"{", b"}", b"[", b"]", b"1e999", b"-1", b"null", b"true"]
    dictionary += [f'"{k}"'.encode() for k in ("currency", "lines", "total_minor", "customer")]
    dictionary += [f'"{k}"'.encode() for k in ("sku", "quantity", "unit_price_minor", "ref")]

    def seeds(self) -> list[bytes]:
        return [json.dumps(doc).encode() for doc in self.target.corpus]

    def decode(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # json's own limits, not the reader's
            pass
        import atheris

        fdp = atheris.FuzzedDataProvider(data)
        return {self._key(fdp): self._value(fdp, 0) for _ in range(fdp.ConsumeIntInRange(0, 5))}

    def _key(self, fdp: Any) -> str:
        if fdp.ConsumeBool():
            return str(fdp.PickValueInList(BASKET_KEYS))
        return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)))

    def _value(self, fdp: Any, depth: int) -> Any:
        kind = fdp.ConsumeIntInRange(0, 8)
        if kind == 0:
            return fdp.ConsumeIntInRange(-(10**6), 10**6)
        if kind == 1:
            return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 20))  # up to 160-bit ints
        if kind == 2:
            return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
        if kind == 3:
            return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 16))
        if kind == 4:
            return fdp.PickValueInList([None, True, False, "CNY", "EUR", "cny", ""])
        if kind == 5 and depth < 4:
            return [self._value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        if kind == 6 and depth < 4:
            n = fdp.ConsumeIntInRange(0, 5)
            return {self._key(fdp): self._value(fdp, depth + 1) for _ in range(n)}
        if kind == 7:
            return str(fdp.PickValueInList(BASKET_KEYS))
        return fdp.ConsumeIntInRange(0, 100_000)


class NdefAdapter(Adapter):
    dictionary = [b"\xd1", b"\x91", b"\x51", b"\xb1", b"\x19", b"U", b"T", b"Sp", b"\x04"]
    dictionary += [b"application/vnd.", b"CPN1:", b"en"]


class SerialAdapter(Adapter):
    """serial: byte 0 picks the port options, byte 1 how the stream is cut into reads
    (255: a byte at a time), the rest is the stream."""

    dictionary = [b"\r", b"\n", b"\r\n", b"\t", b"END", b"\x02", b"\x03", b"]Q1", b"\x00"]
    dictionary += [b"CPN1:"]

    def seeds(self) -> list[bytes]:
        n = len(self.target.options)
        return [bytes([i, 0]) + s for s in self.target.seeds for i in range(n)]

    def decode(self, data: bytes) -> Any:
        if len(data) < 2:
            return SKIP
        which, cut, stream = data[0] % len(self.target.options), data[1], data[2:]
        if cut == 255:
            cuts = tuple(range(len(stream)))
        else:
            rng = random.Random(cut)
            cuts = tuple(sorted(rng.randrange(len(stream) + 1) for _ in range(cut % 13)))
        return which, stream, cuts


class PosAdapter(Adapter):
    """pos: byte 0 picks the path (checkout id included), byte 1 the method and headers
    (no auth, no or a repeated Idempotency-Key, another Content-Type, Accept-Language), the
    rest is the request body as sent."""

    dictionary = JsonAdapter.dictionary + [b'"code"', b'"basket"', b'"cashier"', b"CPN1:"]

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        cids = [*target.checkouts, "nope", "a" * 65, "%2e%2e", "..", "x y", "\u00e9", ""]
        ends = ("", "/coupons", "/commit", "/release", "/reverse")
        self.paths = ["/api/v1/checkouts", "/api/v1/", "/api/v1/checkouts//coupons"]
        self.paths += [f"/api/v1/checkouts/{c}{e}" for c in cids for e in ends]
        self.n = 0

    def _prefix(self, path: str, flags: int = 0) -> bytes:
        return bytes([self.paths.index(path), flags])

    def seeds(self) -> list[bytes]:
        t = self.target
        coupons = f"/api/v1/checkouts/{t.checkouts[0]}/coupons"
        out = [self._prefix(coupons) + json.dumps({"code": c}).encode() for c in t.token_corpus]
        out += [self._prefix("/api/v1/checkouts") + json.dumps(d).encode() for d in t.corpus]
        commit = f"/api/v1/checkouts/{t.checkouts[1]}/commit"
        out.append(self._prefix(commit) + json.dumps({"cashier": "ann"}).encode())
        return out

    def decode(self, data: bytes) -> Any:
        if len(data) < 2:
            return SKIP
        t = self.target
        self.n += 1
        path, flags, raw = self.paths[data[0] % len(self.paths)], data[1], data[2:]
        headers: dict[str, str] = {}
        if not flags & 0x08:
            headers |= t._auth()
        if not flags & 0x10:
            headers["Idempotency-Key"] = "dup" if flags & 0x20 else f"a{self.n}"
        if flags & 0x40:
            headers["Content-Type"] = "text/plain"
        if flags & 0x80:
            headers["Accept-Language"] = "zh"
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            doc = None
        return POS_METHODS[flags & 0x07], path, headers, raw, doc


class ConfigAdapter(Adapter):
    """config: the bytes are the TOML file as the daemon reads it."""

    dictionary = [b"[terminal]", b"[kiosk]", b"[sync]", b"[watchdog]", b"[log]", b"[[input]]"]
    dictionary += [b" = ", b"nan", b"inf", b"-inf", b"true", b"65536", b"-1", b"0.0.0.0", b'"']
    dictionary += [b"port", b"host", b"allow_network", b"allowed_clients", b"interval_s"]
    dictionary += [b"kind", b"fake", b"nfc", b"udp:127.0.0.1:", b"https://c:", b"{", b"["]

    def seeds(self) -> list[bytes]:
        return [s.encode() for s in self.target.seeds]


class UploadAdapter(Adapter):
    """upload: JSON text of a batch's fields (a list of objects: kind, campaign, serial,
    discount_minor, ...; the target numbers, hashes and chains them); other bytes seed the
    target's own generator, so every input is a batch."""

    dictionary = JsonAdapter.dictionary + [b'"redeem"', b'"commit"', b'"hold"', b'"reverse"']
    dictionary += [f'"{k}"'.encode() for k in ("kind", "accepted", "campaign", "serial")]
    dictionary += [f'"{k}"'.encode() for k in ("discount_minor", "basket_minor", "detail")]
    dictionary += [b'"FIX"', b'"PCU"', b'"GIFT"', b"NaN", b"Infinity", b"4611686018427387904"]

    def seeds(self) -> list[bytes]:
        return [json.dumps(batch).encode() for batch in self.target.seeds]

    def decode(self, data: bytes) -> Any:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, list) and doc and all(isinstance(e, dict) for e in doc):
            return doc[:8]
        self.target.rng.seed(data)
        return self.target.generate()


ADAPTERS: dict[str, Callable[[Any], Adapter]] = {
    "tokens": TextAdapter,
    "engine": TextAdapter,
    "ledger": LedgerAdapter,
    "basket": JsonAdapter,
    "ndef": NdefAdapter,
    "serial": SerialAdapter,
    "pos": PosAdapter,
    "config": ConfigAdapter,
    "upload": UploadAdapter,
}


def dict_line(token: bytes) -> str:
    """One libFuzzer dictionary entry: a quoted string with \\xNN escapes."""
    body = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02X}" for b in token)
    return f'"{body}"'


def prepare(name: str, workdir: Path) -> tuple[Target, Adapter]:
    """Set the target up under instrumentation, and write its seeds and dictionary."""
    import atheris

    target = TARGETS[name](random.Random(WORLD_SEED))
    shutil.rmtree(workdir / "world", ignore_errors=True)  # a new world on every run
    (workdir / "world").mkdir(parents=True)
    with atheris.instrument_imports(include=PACKAGES), fixed_randomness(WORLD_SEED):
        # What the target imports lazily, and the modules the daemon's path goes through.
        import coupons.engine  # noqa: F401
        import coupons.ledger  # noqa: F401
        import coupons.rules  # noqa: F401
        import coupons.tokens  # noqa: F401
        import drivers.nfc.driver  # noqa: F401
        import drivers.scanner.driver  # noqa: F401
        import sync.central.ingest  # noqa: F401
        import terminal.daemon.config  # noqa: F401

        target.setup(str(workdir / "world"))
    adapter = ADAPTERS[name](target)
    seeds = workdir / "seeds"
    seeds.mkdir(exist_ok=True)
    for i, seed in enumerate(adapter.seeds()):
        (seeds / f"seed-{i:03d}").write_bytes(seed)
    (workdir / "corpus").mkdir(exist_ok=True)
    lines = [dict_line(tok) for tok in dict.fromkeys(adapter.dictionary)]
    (workdir / f"{name}.dict").write_text("\n".join(lines) + "\n")
    return target, adapter


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} TARGET [libFuzzer flags] [CRASH_FILE]; TARGET one of "
                 + ", ".join(TARGETS))  # fmt: skip
    name = argv[1]
    workdir = Path(os.environ.get("REDEEM_ATHERIS_WORKDIR") or tempfile.mkdtemp(prefix="atheris-"))
    print(f"atheris_main: {name} in {workdir}", file=sys.stderr)
    target, adapter = prepare(name, workdir)
    flags = [a for a in argv[2:] if a.startswith("-")]
    paths = [a for a in argv[2:] if not a.startswith("-")]
    if not paths:  # fuzz: new inputs go to corpus/, the seeds are read from seeds/
        paths = [str(workdir / "corpus"), str(workdir / "seeds")]
        if not any(f.startswith("-dict=") for f in flags):
            flags.append(f"-dict={workdir / f'{name}.dict'}")

    # libFuzzer ends the process itself (no Python exit handlers), so what the contracts
    # saw (accepts checked against the issued set, refusals) goes to a file as it grows.
    notes = workdir / "notes.json"
    count = [0]

    def one_input(data: bytes) -> None:
        count[0] += 1
        if count[0] % 1024 == 0:
            notes.write_text(json.dumps(dict(target.notes, inputs=count[0])))
        job = adapter.decode(data)
        if job is SKIP:
            target.note("not_decoded")
            return
        target.rng.seed(data)  # the target's own choices (basket, context) follow the input
        target.execute(job)

    atheris.Setup([argv[0], *flags, *paths], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
