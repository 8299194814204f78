"""Issuing at scale: a job issues a campaign's coupons chunk by chunk, each chunk's coupon
rows, serials and progress committed in one transaction, so a job that stops (an instance
restart, a fault) resumes from its `done_count` without a duplicate or a gap in its CSV."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import secrets
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import segno

from coupons import cose
from coupons.csvsafe import cell
from coupons.keys import PURPOSE_ISSUER
from coupons.tokens import Claims, issue, plain_code_hash
from sync.central import bulk, campaigns
from sync.central.keyring import CentralError
from sync.central.models import CouponRow, IssueJob, db_serial
from sync.central.store import CODE_ALPHABET, Central

KINDS = ("token", "code")
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
CHUNK = 10_000  # coupons per transaction: a restart loses at most one chunk's work
SIGN_SLICE = 1_000  # tokens a worker signs per task
COUNT_MAX = 10_000_000  # a typo's extra zeros are refused, not run for hours
VALIDITY_S = 90 * 24 * 3600  # as Central.issue: a campaign without an end
CSV_NAME = "coupons.csv"
CSV_HEADER = ("serial", "token", "code")


class RunElsewhere(CentralError):
    """Another runner committed the chunk this one was making: this one stops, and leaves
    the job's state to the runner that goes on with it."""


# Called after each committed chunk with (done, count); an exception it raises stops the
# job there (the chunk is committed), as an instance restart would.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobView:
    id: int
    campaign: str
    count: int
    kind: str
    state: str
    done_count: int
    out_dir: str
    pdf: bool
    created_by: str
    created_at: int
    finished_at: int | None
    error: str | None

    @classmethod
    def of(cls, row: IssueJob) -> JobView:
        return cls(
            int(row.id), str(row.campaign), int(row.count), str(row.kind), str(row.state),
            int(row.done_count), str(row.out_dir), bool(row.pdf), str(row.created_by),
            int(row.created_at), row.finished_at, row.error,
        )  # fmt: skip

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def create_job(
    central: Central,
    campaign: str,
    count: int,
    kind: str,
    out_dir: Path,
    created_by: str,
    pdf: bool = False,
    chunk: int = CHUNK,
) -> JobView:
    """A queued job; its validity window is fixed now, so every chunk signs the same."""
    if kind not in KINDS:
        raise CentralError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not 1 <= count <= COUNT_MAX:
        raise CentralError(f"count must be between 1 and {COUNT_MAX}, not {count}")
    if not 1 <= chunk <= 100_000:
        raise CentralError(f"chunk must be between 1 and 100000, not {chunk}")
    camp = central.campaign(campaign)
    campaigns.require_issuable(campaign)
    now = int(central.now())
    nbf = max(now, int(camp.valid_from or now))
    exp = int(camp.valid_until or nbf + VALIDITY_S)
    with central.writing():
        row = IssueJob.create(
            campaign=campaign, count=count, kind=kind, state=QUEUED, chunk=chunk,
            not_before=nbf, expires=exp, pdf=pdf, out_dir=str(out_dir.resolve()),
            created_by=created_by, created_at=now,
        )  # fmt: skip
    return JobView.of(row)


def get_job(job_id: int) -> JobView:
    row = IssueJob.get_or_none(IssueJob.id == job_id)
    if row is None:
        raise CentralError(f"no issuance job {job_id}")
    return JobView.of(row)


def list_jobs() -> list[JobView]:
    return [JobView.of(r) for r in IssueJob.select().order_by(IssueJob.id)]


def _part(out: Path, index: int) -> Path:
    return out / f"part-{index:06d}.csv"


def _recover_parts(out: Path, committed: int) -> None:
    """A part is written before its chunk commits and renamed after: one left as .tmp is
    kept when its chunk committed (the process stopped between the two) and dropped when
    it did not (its serials and codes never reached the database)."""
    for tmp in out.glob("part-*.csv.tmp"):
        index = int(tmp.name[len("part-") : -len(".csv.tmp")])
        if index < committed:
            tmp.replace(tmp.with_suffix(""))
        else:
            tmp.unlink()


def _new_code() -> str:
    return "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(3))


def _write_part(path: Path, rows: list[tuple[str, str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([tuple(cell(v) for v in r) for r in rows])
    with path.open("w", encoding="utf-8") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())  # on disk before the commit that makes it count


def sign_tokens(seed: bytes, campaign: str, serials: list[int], nbf: int, exp: int) -> list[str]:
    """Tokens for `serials`, signed with the issuer key whose seed is given (in a worker
    process: Ed25519 and the zlib/base45 packing are most of an issuance's CPU)."""
    key = cose.SigningKey(seed)
    return [issue(key, Claims(campaign, serial, nbf, exp)) for serial in serials]


def _tokens(
    pool: Executor | None, key: cose.SigningKey, job: IssueJob, serials: list[int]
) -> list[str]:
    """The chunk's tokens, in serial order: on every core when a pool is given."""
    args = (str(job.campaign), int(job.not_before), int(job.expires))
    if pool is None or len(serials) < 2 * SIGN_SLICE:
        return sign_tokens(key.seed, args[0], serials, args[1], args[2])
    slices = [serials[i : i + SIGN_SLICE] for i in range(0, len(serials), SIGN_SLICE)]
    done = pool.map(sign_tokens, repeat(key.seed), repeat(args[0]), slices, repeat(args[1]),
                    repeat(args[2]))  # fmt: skip
    return [token for part in done for token in part]


def _run_chunk(
    central: Central, job: IssueJob, salt: bytes, index: int, pool: Executor | None = None
) -> int:
    """Issue the job's next chunk; returns the new done_count."""
    key, _ = central.active_key(PURPOSE_ISSUER)
    n = min(int(job.chunk), int(job.count) - int(job.done_count))
    tmp = _part(Path(job.out_dir), index).with_suffix(".csv.tmp")
    now = int(central.now())
    with central.writing():
        # Inside the transaction: a chunk that does not commit takes no serials with it.
        serials = central.allocate_serials(str(job.campaign), n)
        rows: list[tuple[object, ...]] = []
        lines: list[tuple[str, str, str]] = []
        tokens = _tokens(pool, key, job, serials) if job.kind != "code" else [""] * n
        for serial, token in zip(serials, tokens, strict=True):
            code = _new_code() if job.kind == "code" else None
            code_hash = plain_code_hash(salt, code) if code else None
            rows.append((db_serial(serial), job.campaign, now, code_hash))
            lines.append((f"{serial:016x}", token, code or ""))
        # Straight through the driver: peewee's query building cost more than the rows.
        bulk.insert(central.db, CouponRow, ("serial", "campaign", "issued_at", "code_hash"), rows)
        done = int(job.done_count) + n
        moved = (
            IssueJob.update(done_count=done)
            .where((IssueJob.id == job.id) & (IssueJob.done_count == job.done_count))
            .execute()
        )
        if moved != 1:  # another runner took this chunk: ours rolls back
            raise RunElsewhere(f"issuance job {job.id} is being run elsewhere")
        _write_part(tmp, lines)
    tmp.replace(tmp.with_suffix(""))
    job.done_count = done
    return done


def _set_state(job_id: int, state: str, **more: object) -> None:
    IssueJob.update(state=state, **more).where(IssueJob.id == job_id).execute()


def run_job(central: Central, job_id: int, progress: Progress | None = None) -> JobView:
    """Run (or resume) a job to the end: the coupons, then coupons.csv, then the PDF sheets
    when the job asks for them. A fault marks it failed; `resume` runs it on from there."""
    job = IssueJob.get_or_none(IssueJob.id == job_id)
    if job is None:
        raise CentralError(f"no issuance job {job_id}")
    if job.state == DONE:
        return JobView.of(job)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunk = int(job.chunk)
    _recover_parts(out, (int(job.done_count) + chunk - 1) // chunk)
    campaigns.require_issuable(str(job.campaign))
    _set_state(job_id, RUNNING, error=None)
    salt = bytes.fromhex(central._get("plain_salt") or "")
    cores = os.cpu_count() or 1
    # Signing on every core for a job big enough to pay for starting the workers.
    pool = (
        ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"))
        if job.kind != "code" and cores > 1 and int(job.count) - int(job.done_count) >= chunk
        else None
    )
    try:
        while job.done_count < job.count:
            index = int(job.done_count) // chunk
            _run_chunk(central, job, salt, index, pool)
            if progress is not None:
                progress(int(job.done_count), int(job.count))
        if pool is not None:  # the signers are done: their threads end before the sheets
            pool.shutdown()
            pool = None
        _join_parts(out, (int(job.count) + chunk - 1) // chunk)
        if job.pdf:
            from sync.central import sheets  # fpdf2 only when sheets are asked for

            sheets.render_job(central, JobView.of(job))
    except RunElsewhere:
        raise  # not a fault of the job: the other runner finishes it and sets its state
    except BaseException as exc:
        _set_state(job_id, FAILED, error=f"{type(exc).__name__}: {exc}"[:1000])
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _set_state(job_id, DONE, finished_at=int(central.now()))
    return get_job(job_id)


def _join_parts(out: Path, parts: int) -> None:
    """coupons.csv: the header, then every part in order (written anew on each finish, so
    a job that stopped while joining joins again)."""
    tmp = out / (CSV_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(",".join(CSV_HEADER) + "\n")
        for index in range(parts):
            f.write(_part(out, index).read_text(encoding="utf-8"))
    tmp.replace(out / CSV_NAME)


def read_csv(out: Path) -> list[tuple[str, str, str]]:
    """A finished job's coupons: (serial hex, token, code), neutralising undone."""
    from coupons.csvsafe import restore

    with (out / CSV_NAME).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [(restore(s), restore(t), restore(c)) for s, t, c in reader]


def coupon_png(out: Path, serial: str, scale: int = 8) -> bytes:
    """One coupon's QR code as a PNG, on demand (from the job's CSV)."""
    for s, token, code in read_csv(out):
        if s == serial.lower():
            buf = io.BytesIO()
            segno.make(token or code, error="m", micro=False).save(
                buf, kind="png", scale=scale, border=4
            )
            return buf.getvalue()
    raise CentralError(f"no coupon {serial} in {out / CSV_NAME}")
