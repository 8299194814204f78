"""The ledger on the terminal's disk: every applied update kept as its own file, replayed
and re-verified at start-up; a damaged file stops the replay at the last good version."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from coupons import cose, serials, tokens
from coupons.keys import PURPOSE_LEDGER, make_cert
from coupons.ledger import ledger_file, sign_update
from coupons.ledger_store import LedgerStore, write_atomic
from coupons.reasons import Reason
from tests.conftest import World, basket


def published(world: World, versions: int) -> tuple[str, str]:
    """Publish `versions` versions; the token is revoked in the last one, `other` is not."""
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    token, other = world.issue("TEN", 2)
    for v in range(1, versions + 1):
        if v == versions:
            world.central.mark([tokens.parse(token).claims.serial], "revoked")
        world.central.publish()
        world.clock.advance(60)
    return token, other


def fresh_store(world: World, name: str = "ledger2") -> LedgerStore:
    return LedgerStore(world.data.parent / name, world.central.anchor)


def names(store: LedgerStore) -> list[str]:
    return sorted(p.name for p in store.dir.iterdir())


def test_each_update_is_stored_and_replayed(world: World) -> None:
    published(world, 3)
    store = fresh_store(world)
    result = store.import_file(ledger_file(world.central.deltas(0)))
    assert result.applied == [1, 2, 3]
    assert names(store) == [
        "0000000001-delta.cbor",
        "0000000002-delta.cbor",
        "0000000003-delta.cbor",
    ]
    again = LedgerStore(store.dir, world.central.anchor)
    state = again.load()
    assert again.load_problem is None
    assert (state.version, state.chain) == (store.state.version, store.state.chain)
    assert state.summary() == store.state.summary()


def test_snapshot_replaces_older_files(world: World) -> None:
    published(world, 3)
    store = fresh_store(world)
    store.import_file(ledger_file(world.central.deltas(0)[:2]))
    world.central.publish()
    store.import_file(ledger_file([world.central.snapshot()]))
    assert names(store) == ["0000000004-snapshot.cbor"]
    world.central.publish()
    store.import_file(ledger_file(world.central.deltas(4)))
    assert names(store) == ["0000000004-snapshot.cbor", "0000000005-delta.cbor"]
    reloaded = LedgerStore(store.dir, world.central.anchor)
    assert reloaded.load().version == 5 and reloaded.load_problem is None
    assert reloaded.state.summary() == world.central.state().summary()


def test_refused_update_writes_nothing(world: World) -> None:
    published(world, 3)
    store = fresh_store(world)
    store.import_file(ledger_file(world.central.deltas(0)[:1]))
    before = names(store)
    v3 = world.central.deltas(2)
    result = store.import_file(ledger_file(v3))  # gap
    assert [r.kind for r in result.refused] == ["gap"]
    result = store.import_file(ledger_file(v3)[:-10])  # truncated
    assert [r.kind for r in result.refused] == ["damaged"]
    assert names(store) == before
    assert store.state.version == 1


def test_ledger_survives_a_restart(world: World) -> None:
    token, other = published(world, 3)
    world.engine.import_ledger(ledger_file(world.central.deltas(0)))
    assert world.engine.ledger.version == 3
    world.reopen()
    assert world.engine.ledger.version == 3
    assert world.engine.ledger_store.load_problem is None
    assert world.engine.check(other, basket(5000)).accepted
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.REVOKED
    world.sync_ledger()  # and it goes on from there
    assert world.engine.ledger.version == 4


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip-signature":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    elif how == "flip-body":
        cert, signed = cbor2.loads(data)
        i = len(signed) // 2
        path.write_bytes(
            cbor2.dumps([cert, signed[:i] + bytes([signed[i] ^ 0x10]) + signed[i + 1 :]])
        )
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncate", "empty", "flip-signature", "flip-body"])
def test_damaged_file_stops_load_at_last_good_version(world: World, how: str) -> None:
    token, other = published(world, 3)
    world.engine.import_ledger(ledger_file(world.central.deltas(0)))
    world.engine.db.close()
    _damage(world.data / "ledger" / "0000000003-delta.cbor", how)
    world.reopen()
    store = world.engine.ledger_store
    assert world.engine.ledger.version == 2
    assert store.load_problem is not None and "0000000003-delta.cbor" in store.load_problem
    # version 2 did not revoke the token yet: that is what the till now knows
    assert world.engine.check(other, basket(5000)).accepted
    assert world.engine.check(token, basket(5000)).accepted
    # the next sync brings the lost version back and replaces the damaged file
    result = world.engine.import_ledger(ledger_file(world.central.deltas(2)))
    assert result.applied == [3]
    assert world.engine.check(token, basket(5000)).reason is Reason.REVOKED
    world.reopen()
    assert world.engine.ledger.version == 3
    assert world.engine.ledger_store.load_problem is None


def test_damaged_middle_file_ignores_later_files(world: World) -> None:
    published(world, 4)
    store = fresh_store(world)
    store.import_file(ledger_file(world.central.deltas(0)))
    _damage(store.dir / "0000000002-delta.cbor", "flip-signature")
    reloaded = LedgerStore(store.dir, world.central.anchor)
    assert reloaded.load().version == 1
    assert reloaded.load_problem and "0000000002-delta.cbor" in reloaded.load_problem


def test_damaged_first_file_leaves_no_ledger(world: World) -> None:
    token, _ = published(world, 2)
    world.engine.import_ledger(ledger_file(world.central.deltas(0)))
    world.engine.db.close()
    _damage(world.data / "ledger" / "0000000001-delta.cbor", "truncate")
    world.reopen()
    assert world.engine.ledger.version == 0
    assert world.engine.ledger_store.load_problem
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.NO_LEDGER


def test_file_swapped_for_a_forged_one_is_refused_at_load(world: World) -> None:
    """Someone with disk access replaces a stored version with one they made."""
    token, _ = published(world, 2)
    store = fresh_store(world)
    store.import_file(ledger_file(world.central.deltas(0)))
    prev = cbor2.loads(cbor2.loads(cbor2.loads(world.central.deltas(1)[0])[1]).value[2])["prev"]
    attacker_root, attacker_key = cose.SigningKey.generate(), cose.SigningKey.generate()
    cert = make_cert(attacker_root, attacker_key, PURPOSE_LEDGER, 0, 2**40)
    forged = sign_update(
        attacker_key,
        cert,
        {
            "type": "delta",
            "version": 2,
            "prev": prev,
            "issued_at": int(world.clock.now()),
            "unredeemed": serials.pack([]),
        },
    )
    write_atomic(store.dir / "0000000002-delta.cbor", forged)
    reloaded = LedgerStore(store.dir, world.central.anchor)
    assert reloaded.load().version == 1
    assert reloaded.load_problem and "trust anchor" in reloaded.load_problem


def test_stray_files_are_ignored(world: World) -> None:
    published(world, 2)
    store = fresh_store(world)
    store.import_file(ledger_file(world.central.deltas(0)))
    (store.dir / "0000000003-delta.cbor.tmp").write_bytes(b"half written")
    (store.dir / "notes.cbor").write_bytes(b"junk")
    (store.dir / "README").write_text("hello")
    reloaded = LedgerStore(store.dir, world.central.anchor)
    assert reloaded.load().version == 2 and reloaded.load_problem is None


def test_leftovers_from_an_interrupted_snapshot_import_are_harmless(world: World) -> None:
    """Power cut after the snapshot was written but before older files were removed."""
    published(world, 3)
    store = fresh_store(world)
    store.import_file(ledger_file(world.central.deltas(0)[:2]))
    leftovers = {p.name: p.read_bytes() for p in store.dir.iterdir()}
    store.import_file(ledger_file([world.central.snapshot()]))
    for name, data in leftovers.items():
        (store.dir / name).write_bytes(data)
    reloaded = LedgerStore(store.dir, world.central.anchor)
    assert reloaded.load().version == 3 and reloaded.load_problem is None
    assert reloaded.state.summary() == world.central.state().summary()


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "0000000001-delta.cbor"
    write_atomic(target, b"old contents")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_missing_directory_is_an_empty_ledger(world: World) -> None:
    store = fresh_store(world, "does/not/exist/yet")
    assert store.load().version == 0
    assert store.load_problem is None
    assert store.dir.is_dir()
