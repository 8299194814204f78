"""`redeem-central issue-job start|list|resume|png`: issuing at scale as a job that resumes
where it stopped (sync/central/issuing.py), with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coupons.cliutil import EXIT_OK, emit
from sync.central import issuing
from sync.central.cli_common import AddCommand, Commands, audited, cli_actor, open_central
from sync.central.store import Central


def _run(c: Central, job_id: int, args: argparse.Namespace) -> issuing.JobView:
    """Run a job, a tqdm bar on stderr when it is a terminal and --json is not asked for."""
    job = issuing.get_job(job_id)
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return issuing.run_job(c, job_id)
    from tqdm import tqdm

    with tqdm(total=job.count, initial=job.done_count, unit="coupon", unit_scale=True) as bar:

        def progress(done: int, count: int) -> None:
            bar.update(done - bar.n)

        return issuing.run_job(c, job_id, progress)


def _finished(args: argparse.Namespace, job: issuing.JobView) -> int:
    out = Path(job.out_dir)
    files = [issuing.CSV_NAME, *sorted(p.name for p in out.glob("sheets-*.pdf"))]
    emit(
        args,
        {**job.to_dict(), "files": files},
        f"job {job.id}: {job.done_count} coupon(s) for {job.campaign} in {out}: "
        + ", ".join(files),
    )
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    c = open_central(args)
    job = issuing.create_job(
        c,
        args.campaign,
        args.count,
        "code" if args.codes else "token",
        Path(args.out),
        cli_actor(),
        pdf=args.pdf,
    )
    audited(c, "issue_job.start", f"campaign:{args.campaign}", None, job.to_dict())
    return _finished(args, _run(c, job.id, args))


def cmd_resume(args: argparse.Namespace) -> int:
    c = open_central(args)
    before = issuing.get_job(args.id)
    audited(c, "issue_job.resume", f"job:{args.id}", before.to_dict(), None)
    return _finished(args, _run(c, args.id, args))


def cmd_list(args: argparse.Namespace) -> int:
    open_central(args)
    jobs = issuing.list_jobs()
    lines = [
        f"{j.id:>5} {j.campaign:<16} {j.kind:<6} {j.state:<8} {j.done_count:>9}/{j.count:<9} "
        f"{j.created_by:<16} {j.out_dir}"
        for j in jobs
    ]
    header = f"{'JOB':>5} {'CAMPAIGN':<16} {'KIND':<6} {'STATE':<8} {'DONE/COUNT':>19} "
    header += f"{'BY':<16} OUT"
    emit(
        args,
        {"jobs": [j.to_dict() for j in jobs]},
        "\n".join([header, *lines]) if jobs else "no issuance jobs",
    )
    return EXIT_OK


def cmd_png(args: argparse.Namespace) -> int:
    open_central(args)
    job = issuing.get_job(args.id)
    png = issuing.coupon_png(Path(job.out_dir), args.serial)
    Path(args.file).write_bytes(png)
    emit(args, {"file": args.file}, f"wrote {args.file}")
    return EXIT_OK


def add_commands(sub: Commands, command: AddCommand) -> None:
    """`issue-job` and its sub-commands, each working on a central (--data, --json, ...)."""
    job = sub.add_parser("issue-job", help="issue coupons at scale as a resumable job")
    jsub = job.add_subparsers(dest="issue_job_command", required=True)
    sp = command(jsub, "start", cmd_start, "issue coupons in chunks: coupons.csv, PDF sheets")
    sp.add_argument("--campaign", required=True)
    sp.add_argument("--count", type=int, required=True)
    sp.add_argument("--codes", action="store_true", help="typed codes instead of QR tokens")
    sp.add_argument("--pdf", action="store_true", help="printable sheets, 24 a page")
    sp.add_argument("--out", required=True, help="directory for the job's files")
    command(jsub, "list", cmd_list, "every issuance job with its state")
    command(jsub, "resume", cmd_resume, "run a stopped job on from its last chunk").add_argument(
        "--id", type=int, required=True
    )
    sp = command(jsub, "png", cmd_png, "one coupon's QR code as a PNG")
    sp.add_argument("--id", type=int, required=True)
    sp.add_argument("--serial", required=True, help="16 hex digits, as in coupons.csv")
    sp.add_argument("--file", required=True)
