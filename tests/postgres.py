"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory, listening
only on 127.0.0.1 at a free port (no Unix socket), password auth, fsync off; one fresh
database per test module.

    python -m tests.postgres run -- .venv/bin/pytest   # what `make test` does
    python -m tests.postgres start | stop               # a cluster for a shell session

`run` exports the cluster's URL as REDEEM_TEST_POSTGRES to the command and removes the
cluster afterwards. Without that variable, the first test that asks starts a cluster for
the session (or skips when Debian's postgresql package is not installed, unless
REDEEM_TEST_POSTGRES_REQUIRED=1, which `make test` sets)."""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ENV_URL = "REDEEM_TEST_POSTGRES"
ENV_REQUIRED = "REDEEM_TEST_POSTGRES_REQUIRED"
PREFIX = "edge-redeem-pg-"
STATE = Path(tempfile.gettempdir()) / "edge-redeem-pg.url"  # `start` / `stop` remember it


class Unavailable(Exception):
    pass


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: Debian keeps them out of PATH, per major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except (ValueError, IndexError):
        return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    port: int
    password: str
    bin: Path
    user: str | None  # the OS user the server runs as (postgres when we are root)

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            user=self.user,
            cwd=self.root,
            timeout=120,
        )

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(
                "pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop", check=False
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _sweep() -> None:
    """Remove clusters whose owner died without stopping them (a killed test run)."""
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text())
            os.kill(owner, 0)
            continue
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            if time.time() - root.stat().st_mtime < 600:
                continue  # being set up right now, or not ours to judge yet
        bin_ = bindir()
        user = "postgres" if os.geteuid() == 0 else None
        if bin_ is not None:
            Cluster(root, 0, "", bin_, user).stop()
        else:
            shutil.rmtree(root, ignore_errors=True)


def start(owner: int | None = None) -> Cluster:
    bin_ = bindir()
    if bin_ is None:
        raise Unavailable("PostgreSQL is not installed (apt-get install postgresql)")
    _sweep()
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    (root / "owner.pid").write_text(str(owner or os.getpid()))
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as postgres
        try:
            pw_ = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("no postgres user (is Debian's postgresql installed?)") from None
        os.chown(root, pw_.pw_uid, pw_.pw_gid)
        user = "postgres"
    password = secrets.token_hex(16)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if user:
        os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
    os.chmod(pwfile, 0o600)
    cluster = Cluster(root, 0, password, bin_, user)
    try:
        cluster._run(
            "initdb",
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        for attempt in range(5):
            cluster.port = free_port()
            with open(root / "data" / "postgresql.auto.conf", "a") as fh:
                fh.write(
                    "listen_addresses = '127.0.0.1'\n"
                    f"port = {cluster.port}\n"
                    "unix_socket_directories = ''\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 300\nshared_buffers = 64MB\n"
                )
            done = cluster._run(
                "pg_ctl",
                "-D",
                str(root / "data"),
                "-l",
                str(root / "log"),
                "-w",
                "start",
                check=False,
            )
            if done.returncode == 0:
                break
            if attempt == 4:
                log = (root / "log").read_text() if (root / "log").exists() else done.stderr
                raise Unavailable(f"PostgreSQL did not start: {log[-2000:]}")
    except BaseException:
        cluster.stop()
        raise
    _wait(cluster.url)
    return cluster


def _wait(url: str, timeout: float = 30) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(url, connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# ---------------------------------------------------------------- for tests

_session: Cluster | None = None


def required() -> bool:
    return os.environ.get(ENV_REQUIRED, "") not in ("", "0")


def server_url() -> str:
    """The URL of the cluster to use (the one `run` started, else one for this session);
    raises Unavailable when there is none and it is not installed."""
    global _session
    url = os.environ.get(ENV_URL)
    if url:
        return url
    if _session is None:
        _session = start()
        atexit.register(_session.stop)
    return _session.url


def _with_db(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/" + name))


def _admin(url: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database(label: str = "t") -> str:
    """A new empty database on the test cluster; returns its URL."""
    url = server_url()
    safe = "".join(ch if ch.isalnum() else "_" for ch in label.lower())[:30]
    name = f"{safe}_{secrets.token_hex(4)}"
    _admin(url, f'CREATE DATABASE "{name}"')
    return _with_db(url, name)


def drop_database(db_url: str) -> None:
    name = urlparse(db_url).path.lstrip("/")
    _admin(_with_db(db_url, "postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(label: str = "t") -> Iterator[str]:
    url = create_database(label)
    try:
        yield url
    finally:
        drop_database(url)


# ---------------------------------------------------------------- command line


def _run_command(argv: list[str]) -> int:
    cluster = start()
    env = {**os.environ, ENV_URL: cluster.url, ENV_REQUIRED: "1"}
    print(f"tests.postgres: PostgreSQL on 127.0.0.1:{cluster.port} ({cluster.root})", flush=True)
    child = subprocess.Popen(argv, env=env)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return child.wait()
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        rest = argv[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if not rest:
            print("usage: python -m tests.postgres run -- COMMAND...", file=sys.stderr)
            return 2
        try:
            return _run_command(rest)
        except Unavailable as exc:
            print(f"tests.postgres: {exc}", file=sys.stderr)
            return 2
    if argv[:1] == ["start"]:
        cluster = start(owner=os.getppid())
        STATE.write_text(f"{cluster.root}\n{cluster.url}\n")
        print(cluster.url)
        return 0
    if argv[:1] == ["stop"]:
        if STATE.exists():
            root, url = STATE.read_text().split()
            port = urlparse(url).port or 0
            bin_ = bindir()
            if bin_ is not None:
                user = "postgres" if os.geteuid() == 0 else None
                Cluster(Path(root), port, "", bin_, user).stop()
            STATE.unlink()
        return 0
    print("usage: python -m tests.postgres run -- COMMAND... | start | stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
