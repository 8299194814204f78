"""Ledger imports as the manager reads them: each refused update names what was wrong in its
own words, the ledger key's validity is judged at the stated signing time, a snapshot
replaces the files it supersedes on disk. Written to kill mutants `make mutate` found in
ledger apply."""

from __future__ import annotations

from coupons import ledger
from coupons.keys import PURPOSE_ISSUER
from coupons.ledger import LedgerRefused, ledger_file, sign_update
from tests.conftest import World, basket
from tests.test_ledger import next_delta, ready, real_ledger_key, refused, signed_by_central

NOT_VALID = "ledger key was not valid when the update was signed"


def test_a_file_with_bytes_after_it_says_so(world: World) -> None:
    token = ready(world)
    data = ledger_file(world.central.deltas(0)) + b"\x00"
    err = refused(world, data, "damaged", token)
    assert err.detail == "ledger file is not readable CBOR (trailing bytes after the ledger file)"


def test_an_update_without_a_version_says_so(world: World) -> None:
    token = ready(world)
    raw = signed_by_central(world, next_delta(world, version="3"))
    assert refused(world, ledger_file([raw]), "damaged", token).detail == "update has no version"


def test_an_update_of_an_unknown_type_names_it(world: World) -> None:
    token = ready(world)
    raw = signed_by_central(world, next_delta(world, type="patch"))
    err = refused(world, ledger_file([raw]), "damaged", token)
    assert err.detail == "unknown update type 'patch'"


def test_an_update_with_invalid_content_says_what_is_wrong(world: World) -> None:
    token = ready(world)
    raw = signed_by_central(world, next_delta(world, sun_keys={"TEN": b"short"}))
    err = refused(world, ledger_file([raw]), "damaged", token)
    assert err.detail == (
        "update content is invalid: sun_keys: each is a campaign id and a 16-byte AES key"
    )


def test_the_version_already_held_is_named(world: World) -> None:
    ready(world)
    store = world.engine.ledger_store
    (current,) = world.central.deltas(1)
    try:
        ledger.apply(store.anchor, store.state, current)
    except LedgerRefused as exc:
        assert (exc.kind, exc.detail) == ("current", "already at version 2")
    else:
        raise AssertionError("the held version was applied again")


def test_an_update_signed_with_an_issuer_key_is_refused_in_words(world: World) -> None:
    token = ready(world)
    key, cert = world.central._active(PURPOSE_ISSUER)
    raw = sign_update(key, cert, next_delta(world))
    err = refused(world, ledger_file([raw]), "forged", token)
    assert err.detail == "update not signed by a ledger key"


def test_the_ledger_key_must_be_valid_at_the_stated_signing_time(world: World) -> None:
    """An update issued while the key was valid but stating it was signed after the key
    expired is refused; signed within, it is applied."""
    token = ready(world)
    key, cert = real_ledger_key(world)
    until = world.central.anchor.check_cert(cert).not_after
    late = sign_update(key, cert, next_delta(world, signed_at=until))
    assert refused(world, ledger_file([late]), "forged", token).detail == NOT_VALID
    ok = sign_update(key, cert, next_delta(world, signed_at=until - 1))
    result = world.engine.import_ledger(ledger_file([ok]))
    assert result.applied == [3] and not result.refused


def test_an_update_whose_issue_time_is_no_number_is_refused(world: World) -> None:
    """Even when its signing time is a valid one."""
    token = ready(world)
    key, cert = real_ledger_key(world)
    signed_at = world.engine.ledger.issued_at
    body = next_delta(world, issued_at="yesterday", signed_at=signed_at)
    err = refused(world, ledger_file([sign_update(key, cert, body)]), "forged", token)
    assert err.detail == NOT_VALID


def test_a_snapshot_replaces_the_stored_deltas(world: World) -> None:
    """The terminal keeps only what it needs to reload its ledger: after a snapshot, that
    snapshot; after a delta on top, the two."""
    token = ready(world)
    store_dir = world.engine.ledger_store.dir
    assert len(list(store_dir.glob("*.cbor"))) == 2
    world.central.publish()
    result = world.engine.import_ledger(ledger_file([world.central.snapshot()]))
    assert result.applied == [3]
    assert [p.name for p in store_dir.glob("*.cbor")] == ["0000000003-snapshot.cbor"]
    world.reopen()
    assert world.engine.ledger.version == 3
    assert world.engine.check(token, basket(5000)).accepted
