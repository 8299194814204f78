"""Numbered serials at issuance (docs/central-scale.md): a campaign's number in the high 32
bits, a count in the low ones; numbers unique and clear of older serials; two instances
issuing at once never collide; a schema-2 database gains the columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coupons.tokens import parse
from sync.central import store
from sync.central.models import CampaignRow, CouponRow, Setting, db_serial
from sync.central.store import SERIAL_COUNT_MAX, Central, CentralError
from tests import master_key, postgres
from tests.central_server import BACKENDS, ROOT, database_for
from tests.master_key import KEY as MASTER_KEY

LOW = 0xFFFF_FFFF
CAMPAIGN = {"currency": "CNY", "kind": "fixed", "amount_minor": 500}


@pytest.fixture(params=BACKENDS)
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Central]:
    database = database_for(request.param, "issue")
    c = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
    try:
        yield c
    finally:
        c.close()
        if database:
            postgres.drop_database(database)


def add(c: Central, cid: str) -> None:
    c.add_campaign({**CAMPAIGN, "id": cid})


def number_of(cid: str) -> int:
    return int(CampaignRow.get(CampaignRow.id == cid).number)


def test_serials_are_the_campaign_number_and_a_count_from_one(central: Central) -> None:
    add(central, "A")
    add(central, "B")
    a, b = number_of("A"), number_of("B")
    assert a != b and 0 < a <= LOW and 0 < b <= LOW
    first = central.issue("A", 3)
    central.issue("B", 2, codes=True)
    second = central.issue("A", 2)
    assert [i.serial for i in first + second] == [(a << 32) | n for n in range(1, 6)]
    for i in first + second:
        assert i.token is not None
        assert parse(i.token).claims.serial == i.serial
    assert sorted(
        int(r.serial) & LOW for r in CouponRow.select().where(CouponRow.campaign == "B")
    ) == [1, 2]
    add(central, "A")  # adding it again (an edit) keeps its number and its count
    assert number_of("A") == a
    assert [i.serial for i in central.issue("A", 1)] == [(a << 32) | 6]


def test_a_campaign_without_a_number_gets_one_at_its_first_issue(central: Central) -> None:
    add(central, "OLD")
    CampaignRow.update(number=None).where(CampaignRow.id == "OLD").execute()
    issued = central.issue("OLD", 2)
    number = number_of("OLD")
    assert [i.serial for i in issued] == [(number << 32) | 1, (number << 32) | 2]


def test_a_number_is_non_zero_unique_and_clear_of_older_serials(
    central: Central, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(central, "TAKEN")
    taken = number_of("TAKEN")
    legacy = 0xDEAD_BEEF_0000_1234  # an old random serial in 0xDEADBEEF's range
    CouponRow.create(serial=db_serial(legacy), campaign="TAKEN", issued_at=0)
    draws = iter([0, taken, 0xDEAD_BEEF, 0x8000_0001])
    monkeypatch.setattr(store.secrets, "randbits", lambda bits: next(draws))
    add(central, "NEW")
    assert number_of("NEW") == 0x8000_0001  # past 2**63: stored signed, still found
    assert central.issue("NEW", 1)[0].serial == (0x8000_0001 << 32) | 1


def test_the_count_stops_at_32_bits(central: Central) -> None:
    add(central, "FULL")
    CampaignRow.update(issued=SERIAL_COUNT_MAX - 1).where(CampaignRow.id == "FULL").execute()
    with pytest.raises(CentralError, match="cannot issue 2 more"):
        central.issue("FULL", 2)
    assert CampaignRow.get(CampaignRow.id == "FULL").issued == SERIAL_COUNT_MAX - 1
    assert central.issue("FULL", 1)[0].serial & LOW == SERIAL_COUNT_MAX


def test_threads_issuing_at_once_get_disjoint_ranges(central: Central) -> None:
    add(central, "T")
    got: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with central.session():
                for _ in range(10):
                    got.extend(i.serial for i in central.issue("T", 5, codes=True))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    number = number_of("T")
    assert sorted(got) == [(number << 32) | n for n in range(1, 201)]


ISSUER = """
import json, sys, time
from pathlib import Path
from sync.central.store import Central
data, database, go, cid = sys.argv[1:5]
c = Central(Path(data), database=database or None)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
out = []
for _ in range(20):
    out += [i.serial for i in c.issue(cid, 10, codes=True)]
c.close()
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_instances_issuing_at_once_never_collide(backend: str, tmp_path: Path) -> None:
    database = database_for(backend, "issue2")
    c = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
    try:
        add(c, "PAIR")
        c.close()
        go = tmp_path / "go"
        env = {**os.environ, "PYTHONPATH": str(ROOT), **master_key.env(tmp_path)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    ISSUER,
                    str(tmp_path / "central"),
                    database or "",
                    str(go),
                    "PAIR",
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        lists = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            lists.append(json.loads(out.strip().splitlines()[-1]))
        c = Central(tmp_path / "central", database=database, master_key=MASTER_KEY)
        number = number_of("PAIR")
        assert sorted(lists[0] + lists[1]) == [(number << 32) | n for n in range(1, 401)]
        assert CouponRow.select().where(CouponRow.campaign == "PAIR").count() == 400
    finally:
        c.close()
        if database:
            postgres.drop_database(database)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_schema_2_database_gains_the_campaign_columns(backend: str, tmp_path: Path) -> None:
    database = database_for(backend, "schema2")
    c = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
    try:
        add(c, "LEGACY")
        legacy = 0x0123_4567_89AB_CDEF
        CouponRow.create(serial=db_serial(legacy), campaign="LEGACY", issued_at=int(time.time()))
        # back to schema 2: no number, no count, no index on them
        c.db.execute_sql('DROP INDEX IF EXISTS "campaignrow_number"')
        c.db.execute_sql('ALTER TABLE "campaignrow" DROP COLUMN "number"')
        c.db.execute_sql('ALTER TABLE "campaignrow" DROP COLUMN "issued"')
        Setting.update(value="2").where(Setting.key == "schema").execute()
        c.close()
        c = Central(tmp_path / "central", database=database, master_key=MASTER_KEY)
        assert Setting.get(Setting.key == "schema").value == "4"
        columns = {col.name for col in c.db.get_columns("campaignrow")}
        assert {"number", "issued"} <= columns
        assert "campaignrow_number" in {i.name for i in c.db.get_indexes("campaignrow")}
        row = CampaignRow.get(CampaignRow.id == "LEGACY")
        assert row.number is None and row.issued == 0
        issued = c.issue("LEGACY", 2)
        number = number_of("LEGACY")
        assert [i.serial for i in issued] == [(number << 32) | 1, (number << 32) | 2]
        assert CouponRow.get_or_none(CouponRow.serial == db_serial(legacy)) is not None
        c.close()
        # A second start changes nothing.
        c = Central(tmp_path / "central", database=database, master_key=MASTER_KEY)
        assert number_of("LEGACY") == number
    finally:
        c.close()
        if database:
            postgres.drop_database(database)
