"""A small seeded mutation fuzzer in pure Python: byte, text, CBOR and JSON mutators fed
from real valid inputs, an outcome-guided corpus, and a runner that counts every execution.
Deterministic for a given seed, so a failure in CI reproduces on any machine (the Pi too)."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import traceback
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cbor2

# ---------------------------------------------------------------- interesting values

INTERESTING_BYTES = bytes([0x00, 0x01, 0x02, 0x10, 0x17, 0x18, 0x1F, 0x20, 0x3F, 0x40])
INTERESTING_BYTES += bytes([0x5F, 0x7E, 0x7F, 0x80, 0x81, 0x9F, 0xBF, 0xC0, 0xD2, 0xF6, 0xFF])
INTERESTING_CHUNKS = [
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # CBOR uint64 max
    b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",  # CBOR most negative int
    b"\x5b\x00\x00\x00\x00\xff\xff\xff\xff",  # CBOR byte string claiming 4 GiB
    b"\x9f\x9f\x9f\x9f",  # CBOR indefinite arrays, nested
    b"\xbf\xff",  # CBOR indefinite empty map
    b"\xd9\xd9\xf7",  # CBOR self-describe tag
    b"\xc1\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # tag 1 (epoch) with +inf
    b"\xf9\x7e\x00",  # half-float NaN
    b"\xef\xbb\xbf",  # UTF-8 BOM
    b"\xed\xa0\x80",  # a UTF-8 encoded surrogate
    b"\xc0\x80",  # overlong NUL
    b"%00",
    b"%",
    b"\r\n",
]
INTERESTING_INTS = [
    0,
    1,
    -1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    -(2**31),
    2**32,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**64) - 1,
    10**12,
    10**12 + 1,
    10**100,
]
INTERESTING_FLOATS = [0.0, -0.0, 0.5, 1e308, -1e308, float("inf"), float("-inf"), float("nan")]
INTERESTING_STRS = [
    "",
    " ",
    "\x00",
    "a" * 300,
    "\u0130",  # upper-cases to two characters' worth
    "\ufb03",  # "ffi" ligature: .upper() makes it longer
    "\u00df",  # sharp s: .upper() is "SS"
    "\ud800",  # lone surrogate
    "\u202e",
    "\ufeff",
    "\U0001f600",
    "CPN1:",
    "cpn1:",
    "%",
    "../",
    "{}",
    "null",
    "NaN",
    "1e400",
]


# ---------------------------------------------------------------- bytes


class ByteMutator:
    """libFuzzer's classic mutations over bytes, stacked 1..max_stack at a time, with
    splices between seeds and a dictionary of tokens the format is made of."""

    def __init__(
        self,
        rng: random.Random,
        dictionary: Sequence[bytes] = (),
        max_len: int = 4096,
        max_stack: int = 4,
    ) -> None:
        self.rng = rng
        self.dictionary = list(dictionary) + INTERESTING_CHUNKS
        self.max_len = max_len
        self.max_stack = max_stack
        self.ops: list[Callable[[bytearray, Sequence[bytes]], None]] = [
            self.flip_bit,
            self.flip_bit,
            self.set_byte,
            self.interesting_byte,
            self.arith,
            self.insert_bytes,
            self.delete_range,
            self.delete_range,
            self.repeat_range,
            self.truncate,
            self.splice,
            self.insert_token,
            self.overwrite_token,
            self.swap_ranges,
            self.copy_range,
        ]

    def mutate(self, data: bytes, others: Sequence[bytes] = ()) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, self.max_stack)):
            self.rng.choice(self.ops)(buf, others)
        if len(buf) > self.max_len:
            del buf[self.max_len :]
        return bytes(buf)

    def _pos(self, buf: bytearray, extra: int = 0) -> int:
        return self.rng.randrange(len(buf) + extra) if buf or extra else 0

    def _span(self, buf: bytearray) -> tuple[int, int]:
        if not buf:
            return 0, 0
        start = self.rng.randrange(len(buf))
        # Mostly short spans, sometimes long ones.
        n = 1 + min(int(self.rng.expovariate(1 / 4)), len(buf) - start - 1)
        return start, start + n

    def flip_bit(self, buf: bytearray, _: Sequence[bytes]) -> None:
        if buf:
            i = self._pos(buf)
            buf[i] ^= 1 << self.rng.randrange(8)

    def set_byte(self, buf: bytearray, _: Sequence[bytes]) -> None:
        if buf:
            buf[self._pos(buf)] = self.rng.randrange(256)

    def interesting_byte(self, buf: bytearray, _: Sequence[bytes]) -> None:
        if buf:
            buf[self._pos(buf)] = self.rng.choice(INTERESTING_BYTES)

    def arith(self, buf: bytearray, _: Sequence[bytes]) -> None:
        if buf:
            i = self._pos(buf)
            buf[i] = (buf[i] + self.rng.choice((-35, -2, -1, 1, 2, 35))) & 0xFF

    def insert_bytes(self, buf: bytearray, _: Sequence[bytes]) -> None:
        i = self._pos(buf, 1)
        n = self.rng.choice((1, 1, 2, 3, 8))
        buf[i:i] = bytes(self.rng.randrange(256) for _ in range(n))

    def delete_range(self, buf: bytearray, _: Sequence[bytes]) -> None:
        a, b = self._span(buf)
        del buf[a:b]

    def repeat_range(self, buf: bytearray, _: Sequence[bytes]) -> None:
        a, b = self._span(buf)
        times = self.rng.choice((1, 2, 3, 16, 200))
        buf[b:b] = bytes(buf[a:b]) * times

    def truncate(self, buf: bytearray, _: Sequence[bytes]) -> None:
        del buf[self._pos(buf, 1) :]

    def splice(self, buf: bytearray, others: Sequence[bytes]) -> None:
        if not others:
            return self.insert_bytes(buf, others)
        other = self.rng.choice(others)
        a, b = sorted((self._pos(buf, 1), self._pos(buf, 1)))
        c = self.rng.randrange(len(other) + 1)
        buf[a:b] = other[c : c + self.rng.randrange(1, 64)]

    def insert_token(self, buf: bytearray, _: Sequence[bytes]) -> None:
        i = self._pos(buf, 1)
        buf[i:i] = self.rng.choice(self.dictionary)

    def overwrite_token(self, buf: bytearray, _: Sequence[bytes]) -> None:
        tok = self.rng.choice(self.dictionary)
        i = self._pos(buf, 1)
        buf[i : i + len(tok)] = tok

    def swap_ranges(self, buf: bytearray, _: Sequence[bytes]) -> None:
        if len(buf) < 4:
            return
        a, b = sorted(self.rng.sample(range(len(buf)), 2))
        n = self.rng.randint(1, min(8, b - a, len(buf) - b))
        buf[a : a + n], buf[b : b + n] = buf[b : b + n], buf[a : a + n]

    def copy_range(self, buf: bytearray, _: Sequence[bytes]) -> None:
        a, b = self._span(buf)
        chunk = bytes(buf[a:b])
        i = self._pos(buf, 1)
        buf[i : i + len(chunk)] = chunk


# ---------------------------------------------------------------- text


class TextMutator:
    """Character-level mutations drawn from an alphabet (base45's for tokens), plus case
    flips, whitespace, dictionary words and unicode oddities."""

    def __init__(
        self,
        rng: random.Random,
        alphabet: str,
        dictionary: Sequence[str] = (),
        max_len: int = 2048,
        max_stack: int = 3,
    ) -> None:
        self.rng = rng
        self.alphabet = alphabet
        self.dictionary = list(dictionary) + INTERESTING_STRS
        self.max_len = max_len
        self.max_stack = max_stack

    def mutate(self, text: str, others: Sequence[str] = ()) -> str:
        rng = self.rng
        chars = list(text)
        for _ in range(rng.randint(1, self.max_stack)):
            op = rng.randrange(12)
            i = rng.randrange(len(chars) + 1)
            if op <= 2 and chars:  # replace with an alphabet character
                chars[min(i, len(chars) - 1)] = rng.choice(self.alphabet)
            elif op == 3:  # insert an alphabet character
                chars.insert(i, rng.choice(self.alphabet))
            elif op == 4 and chars:  # delete a few
                del chars[i : i + rng.choice((1, 1, 2, 3, 7))]
            elif op == 5:  # truncate
                del chars[i:]
            elif op == 6 and chars:  # case flip of a span
                j = min(len(chars), i + rng.randint(1, 8))
                chars[i:j] = list("".join(chars[i:j]).swapcase())
            elif op == 7:  # a dictionary word
                chars[i:i] = list(rng.choice(self.dictionary))
            elif op == 8:  # whitespace or control
                chars.insert(i, rng.choice(" \t\r\n\x00\x0b\x0c\xa0\u2028\u3000"))
            elif op == 9 and chars:  # repeat a span
                j = min(len(chars), i + rng.randint(1, 16))
                chars[j:j] = chars[i:j] * rng.choice((1, 2, 50))
            elif op == 10 and others:  # splice with another seed
                other = rng.choice(others)
                k = rng.randrange(len(other) + 1)
                chars[i:] = list(other[k:])
            else:  # any code point
                chars.insert(i, chr(rng.choice((rng.randrange(128), rng.randrange(0x110000)))))
        return "".join(chars[: self.max_len])


# ---------------------------------------------------------------- structures (CBOR, JSON)


class TreeMutator:
    """Mutates a decoded document (CBOR or JSON shaped): replace a node with an interesting
    value of any type, drop or add a key or element, duplicate, nest, re-type."""

    def __init__(self, rng: random.Random, cbor: bool = True, keys: Sequence[Any] = ()) -> None:
        self.rng = rng
        self.cbor = cbor
        self.keys = list(keys)

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(9 if self.cbor else 7)
        if kind == 0:
            return rng.choice(INTERESTING_INTS)
        if kind == 1:
            return rng.choice(INTERESTING_FLOATS)
        if kind == 2:
            return rng.choice(INTERESTING_STRS)
        if kind == 3:
            return rng.choice((None, True, False))
        if kind == 4:
            return [] if depth > 2 else [self.value(depth + 1) for _ in range(rng.randrange(3))]
        if kind == 5:
            return {} if depth > 2 else {self.key(): self.value(depth + 1)}
        if kind == 6:
            return rng.choice(self.keys) if self.keys else "x"
        if kind == 7:
            return rng.choice((b"", b"\x00" * 16, bytes(range(64)), b"\xff" * 4))
        return cbor2.CBORTag(rng.choice((0, 1, 2, 18, 24, 55799, 2**32)), self.value(depth + 1))

    def key(self) -> Any:
        if self.keys and self.rng.random() < 0.7:
            return self.rng.choice(self.keys)
        v = self.value(3)
        if not self.cbor:
            return str(v)
        try:
            hash(v)
        except (TypeError, RuntimeError):  # a list, a map, a tag holding one
            return repr(v)
        return v

    def mutate(self, doc: Any) -> Any:
        """A mutated copy (the original is left alone)."""
        doc = _thaw(doc)
        for _ in range(self.rng.randint(1, 3)):
            doc = self._mutate_at(doc, 0)
        return doc

    def _mutate_at(self, node: Any, depth: int) -> Any:
        rng = self.rng
        children: list[Any] = []
        if isinstance(node, dict):
            children = list(node)
        elif isinstance(node, list):
            children = list(range(len(node)))
        elif isinstance(node, cbor2.CBORTag):
            if rng.random() < 0.5:
                return cbor2.CBORTag(node.tag, self._mutate_at(node.value, depth + 1))
            return rng.choice((node.value, cbor2.CBORTag(rng.choice((17, 18, 98)), node.value)))
        # Descend with a probability that keeps both shallow and deep changes common.
        if children and rng.random() < 0.75:
            k = rng.choice(children)
            node[k] = self._mutate_at(node[k], depth + 1)
            return node
        op = rng.randrange(6)
        if op == 0 or not isinstance(node, (dict, list)):
            if isinstance(node, int) and not isinstance(node, bool) and rng.random() < 0.5:
                return node + rng.choice((-1, 1, -(2**32), 2**32, 2**64))
            if isinstance(node, (str, bytes)) and node and rng.random() < 0.5:
                i = rng.randrange(len(node))
                cut: str | bytes = node[:i] + node[i + 1 :]  # type: ignore[operator]
                grown: str | bytes = node + node[:i]  # type: ignore[operator]
                return cut if rng.random() < 0.5 else grown
            return self.value(depth)
        if op == 1 and children:  # drop one
            del node[rng.choice(children)]
        elif op == 2:  # add one
            if isinstance(node, dict):
                node[self.key()] = self.value(depth + 1)
            else:
                node.insert(rng.randrange(len(node) + 1), self.value(depth + 1))
        elif op == 3 and children and isinstance(node, list):  # duplicate an element
            node.insert(rng.randrange(len(node) + 1), rng.choice(node))
        elif op == 4:  # wrap it
            return [node] if rng.random() < 0.5 else {self.key(): node}
        else:
            return self.value(depth)
        return node


def _thaw(doc: Any) -> Any:
    """A deep, mutable copy (cbor2 decodes maps to frozendict in places, arrays to tuples)."""
    if isinstance(doc, dict) or (hasattr(doc, "items") and not isinstance(doc, (str, bytes))):
        return {_hashable(_thaw(k)): _thaw(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_thaw(v) for v in doc]
    if isinstance(doc, cbor2.CBORTag):
        return cbor2.CBORTag(doc.tag, _thaw(doc.value))
    return doc


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        return str(key)
    return key


def cbor_dumps(doc: Any) -> bytes | None:
    """Encode a mutated document; None when cbor2 cannot (e.g. a tag number out of range)."""
    try:
        return cbor2.dumps(doc)
    except Exception:
        return None


def long_head(item: bytes) -> bytes:
    """The same CBOR item with its head's argument written in 8 bytes (an integer, a length,
    a tag number): one value, a second spelling. Floats and simple values are left alone."""
    if not item:
        return item
    major, ai = item[0] >> 5, item[0] & 0x1F
    if major == 7 or ai >= 27:
        return item
    if ai < 24:
        arg, rest = ai, item[1:]
    else:
        n = 1 << (ai - 24)
        arg, rest = int.from_bytes(item[1 : 1 + n], "big"), item[1 + n :]
    return bytes([major << 5 | 27]) + arg.to_bytes(8, "big") + rest


class CborRespeller:
    """Second spellings of one CBOR map that a strict reader must refuse (RFC 8949 4.1,
    RFC 9052 section 3): a key repeated (with its own value or another), an item after the
    map, a head written longer than it needs, an indefinite length. cbor2.loads reads every
    one of them as an ordinary map."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def respell(self, data: bytes) -> bytes | None:
        """A respelling of the map `data` encodes, or None (not a small map)."""
        rng = self.rng
        try:
            doc = cbor2.loads(data)
        except Exception:
            return None
        if not hasattr(doc, "items") or not 0 < len(doc) < 24:
            return None
        pairs = [(cbor2.dumps(k), cbor2.dumps(v)) for k, v in doc.items()]
        op = rng.randrange(6)
        if op <= 1:  # a key twice: ahead of or after the original
            key, value = rng.choice(pairs)
            other = rng.choice(
                (value, cbor2.dumps(rng.choice(INTERESTING_INTS)), cbor2.dumps(bytes(4)))
            )
            pairs.insert(rng.randrange(len(pairs) + 1), (key, other))
            head = bytes([0xA0 + len(pairs)]) if len(pairs) < 24 else bytes([0xB8, len(pairs)])
            out = head + b"".join(k + v for k, v in pairs)
        elif op == 2:  # an item after the map
            out = data + rng.choice((b"\x00", b"\xf6", b"\xa0", data))
        elif op == 3:  # indefinite length
            out = b"\xbf" + b"".join(k + v for k, v in pairs) + b"\xff"
        elif op == 4:  # a longer head on one key or value
            i = rng.randrange(len(pairs))
            k, v = pairs[i]
            pairs[i] = (long_head(k), v) if rng.random() < 0.5 else (k, long_head(v))
            out = bytes([0xA0 + len(pairs)]) + b"".join(k + v for k, v in pairs)
        else:  # a longer head on the map itself
            out = long_head(data)
        return out if out != data else None


# ---------------------------------------------------------------- running


class FuzzFailure(AssertionError):
    """The target ran and broke its contract (accepted what it must not, changed state)."""


@dataclass
class Failure:
    target: str
    iteration: int
    kind: str  # "crash" (an exception it must not raise) or "contract"
    error: str
    input: str  # repr, cut to a readable length

    def __str__(self) -> str:
        return f"{self.target}#{self.iteration} {self.kind}: {self.error}\n  input: {self.input}"


@dataclass
class Stats:
    target: str
    executions: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    signals: int = 0  # distinct outcomes seen (the corpus grew on each)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0

    def merge(self, other: Stats) -> None:
        self.executions += other.executions
        self.seconds += other.seconds  # core-seconds: the rate is per core
        self.failures += other.failures
        self.signals = max(self.signals, other.signals)
        for k, v in other.notes.items():
            self.notes[k] = self.notes.get(k, 0) + v

    def line(self) -> str:
        notes = " ".join(f"{k}={v}" for k, v in sorted(self.notes.items()))
        return (
            f"{self.target:<12} {self.executions:>9,} inputs {self.seconds:7.1f} s "
            f"{self.rate:>9,.0f}/s  outcomes={self.signals} failures={len(self.failures)}"
            + (f"  {notes}" if notes else "")
        )


class Target:
    """One thing under fuzz. `generate` makes an input from the corpus, `execute` runs it
    and returns an outcome signal (a new one adds the input to the corpus) or raises
    FuzzFailure; any other exception out of `execute` is a crash."""

    name = "target"
    max_corpus = 2000

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.corpus: list[Any] = []
        self.notes: dict[str, int] = {}

    def setup(self, workdir: str) -> None:
        """Build what the target needs (a world, a store) and fill the seed corpus."""

    def teardown(self) -> None:
        pass

    def generate(self) -> Any:
        raise NotImplementedError

    def execute(self, data: Any) -> Hashable:
        raise NotImplementedError

    def note(self, key: str, n: int = 1) -> None:
        self.notes[key] = self.notes.get(key, 0) + n

    def add(self, data: Any) -> None:
        if len(self.corpus) < self.max_corpus:
            self.corpus.append(data)
        else:  # keep the seeds, replace a grown entry
            self.corpus[self.rng.randrange(len(self.corpus) // 4, len(self.corpus))] = data


def run_target(
    target: Target, iterations: int, max_failures: int = 10, deadline_s: float | None = None
) -> Stats:
    """Execute `iterations` generated inputs (fewer if deadline_s passes first)."""
    stats = Stats(target.name)
    seen: set[Hashable] = set()
    start = time.perf_counter()
    stop_at = start + deadline_s if deadline_s else float("inf")
    i = 0
    for i in range(iterations):  # noqa: B007 - i is reported below
        if i % 256 == 0 and time.perf_counter() > stop_at:
            break
        data = target.generate()
        try:
            signal = target.execute(data)
        except FuzzFailure as exc:
            stats.failures.append(Failure(target.name, i, "contract", str(exc), _show(data)))
        except Exception as exc:
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            stats.failures.append(
                Failure(target.name, i, "crash", "".join(tb[-3:]).strip(), _show(data))
            )
        else:
            if signal is not None and signal not in seen:
                seen.add(signal)
                target.add(data)
        stats.executions += 1
        if len(stats.failures) >= max_failures:
            break
    stats.seconds = time.perf_counter() - start
    stats.signals = len(seen)
    stats.notes = dict(target.notes)
    return stats


def _show(data: Any, limit: int = 600) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


@dataclass(frozen=True)
class Job:
    target: str
    iterations: int
    seed: int
    shard: int = 0


# Set by the module that defines the targets (a name -> class mapping); looked up by name
# in worker processes so jobs stay picklable.
TargetFactory = Callable[[str, random.Random], Target]


def run_job(job: Job, factory: TargetFactory, workdir: str) -> Stats:
    rng = random.Random(f"{job.seed}:{job.target}:{job.shard}")
    target = factory(job.target, rng)
    shard_dir = os.path.join(workdir, f"{job.target}-{job.shard}")
    os.makedirs(shard_dir, exist_ok=True)
    target.setup(shard_dir)
    try:
        return run_target(target, job.iterations)
    finally:
        target.teardown()


def run_jobs(
    jobs: Iterable[Job], factory: TargetFactory, workdir: str, processes: int = 1
) -> dict[str, Stats]:
    """Run jobs in this process or in a spawn pool; stats merged per target."""
    jobs = list(jobs)
    merged: dict[str, Stats] = {}
    if processes <= 1:
        results = [run_job(j, factory, workdir) for j in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or sqlite handles
        with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
            futures = [pool.submit(run_job, j, factory, workdir) for j in jobs]
            results = [f.result() for f in futures]
    for s in results:
        merged.setdefault(s.target, Stats(s.target)).merge(s)
    return merged


def shards(target: str, iterations: int, seed: int, per_shard: int) -> list[Job]:
    """Split a large count into shards so a pool keeps every core busy."""
    n = max(1, -(-iterations // per_shard))
    base, extra = divmod(iterations, n)
    return [Job(target, base + (1 if i < extra else 0), seed, i) for i in range(n)]
