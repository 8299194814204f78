"""Ledger updates at the version the terminal already holds: the chain link decides between
"already have it" and a rollback, and a link that is missing or not bytes is a rollback
refused in words, never a crash of the import; a file that is no ledger says so. Written to
kill mutants `make mutate` found."""

from __future__ import annotations

import cbor2

from coupons import ledger
from coupons.ledger import ledger_file
from tests.conftest import World
from tests.test_ledger import next_delta, ready, real_ledger_key, refused, signed_by_central


def test_a_delta_at_the_held_version_without_its_link_is_a_rollback(world: World) -> None:
    token = ready(world)
    version = world.engine.ledger.version
    for prev in (None, "not bytes"):
        body = next_delta(world, version=version)
        if prev is None:
            del body["prev"]
        else:
            body["prev"] = prev
        err = refused(world, ledger_file([signed_by_central(world, body)]), "rollback", token)
        assert f"version {version} is not newer than {version}" in str(err.detail)


def test_a_file_that_is_not_a_ledger_is_refused_saying_so(world: World) -> None:
    """The manager importing from a USB stick reads why the file was refused."""
    token = ready(world)
    err = refused(world, b"\xff\x00 not cbor", "damaged", token)
    assert str(err.detail).startswith("ledger file is not readable CBOR (")
    for doc, words in (
        ({"format": "something-else"}, "not an edge-redeem ledger file"),
        ({"format": ledger.FILE_FORMAT, "updates": []}, "ledger file holds no updates"),
        (
            {"format": ledger.FILE_FORMAT, "updates": ["x"]},
            "ledger file updates are not byte strings",
        ),
    ):
        assert refused(world, cbor2.dumps(doc), "damaged", token).detail == words


def test_each_damaged_or_forged_update_is_refused_in_its_own_words(world: World) -> None:
    """The manager's import report (and the central's flag) says what was wrong with it."""
    token = ready(world)
    key, cert = real_ledger_key(world)
    body = cbor2.dumps({"format": ledger.UPDATE_FORMAT, **next_delta(world)}, canonical=True)
    tag = cbor2.loads(key.sign1(body))
    protected, unprotected, payload, signature = tag.value
    bad_signature = bytes([signature[0] ^ 1]) + signature[1:]
    tampered = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, bad_signature]))
    cases = (
        (b"\x01\x02", "damaged", "update is truncated or not an update"),
        (cbor2.dumps([cert, tampered]), "forged", "ledger signature does not verify"),
        (cbor2.dumps([cert, key.sign1(b"\xff\xff")]), "damaged", "update body is not CBOR"),
        (
            cbor2.dumps([cert, key.sign1(cbor2.dumps({"format": "other"}))]),
            "damaged",
            "update body has an unknown format",
        ),
    )
    for raw, kind, words in cases:
        assert refused(world, ledger_file([raw]), kind, token).detail == words
