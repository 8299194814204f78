from tests.conftest import World, basket


def test_issued_coupon_is_accepted_once(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    world.sync_ledger()
    first = world.engine.redeem(token, basket(5000))
    second = world.engine.redeem(token, basket(5000))
    assert first.accepted and first.discount_minor == 1000
    assert not second.accepted and second.reason.value == "already_redeemed"
