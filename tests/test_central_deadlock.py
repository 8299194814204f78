"""A PostgreSQL deadlock or serialization failure during a journal upload is retried, not
answered with a 500. peewee wraps psycopg2's errors by class name and lets a deadlock
(DeadlockDetected) through unwrapped: the retry must know it in that form too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from coupons.clock import FixedClock
from sync.central import ingest
from tests.central_server import Running, chain, running_central
from tests.conftest import T0


def _real_deadlock(url: str) -> psycopg2.Error:
    """Two sessions that each hold the row the other wants: PostgreSQL ends one of them."""
    setup = psycopg2.connect(url)
    setup.autocommit = True
    setup.cursor().execute("CREATE TABLE dl (id int primary key, n int)")
    setup.cursor().execute("INSERT INTO dl VALUES (1, 0), (2, 0)")
    a, b = psycopg2.connect(url), psycopg2.connect(url)
    caught: list[psycopg2.Error] = []
    ready = threading.Barrier(2)

    def take(conn: psycopg2.extensions.connection, first: int, second: int) -> None:
        cur = conn.cursor()
        try:
            cur.execute("UPDATE dl SET n = n + 1 WHERE id = %s", (first,))
            ready.wait(10)
            cur.execute("UPDATE dl SET n = n + 1 WHERE id = %s", (second,))
            conn.commit()
        except psycopg2.Error as exc:
            caught.append(exc)
            conn.rollback()

    threads = [
        threading.Thread(target=take, args=(a, 1, 2)),
        threading.Thread(target=take, args=(b, 2, 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for conn in (a, b, setup):
        conn.close()
    assert len(caught) == 1
    return caught[0]


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Running]:
    with running_central("postgresql", tmp_path, FixedClock(T0)) as c:
        yield c


def test_a_deadlock_is_known_as_retryable_in_the_form_peewee_lets_through(
    central: Running,
) -> None:
    assert central.database is not None
    exc = _real_deadlock(central.database)
    assert exc.pgcode == "40P01" and isinstance(exc, psycopg2.OperationalError)
    assert ingest._retryable(exc)


def test_an_upload_that_meets_a_deadlock_is_retried_and_stored_once(
    central: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert central.database is not None
    deadlock = _real_deadlock(central.database)
    dev = central.device("S1")
    real = ingest._ingest
    calls: list[int] = []

    def first_time_deadlocks(*args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise deadlock
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest, "_ingest", first_time_deadlocks)
    reply = dev.push(chain({"source": "deadlock"}, {"source": "deadlock"}))
    assert reply["acked_seq"] == 2 and reply["problem"] is None
    assert len(calls) == 2  # retried once, inside the same request
