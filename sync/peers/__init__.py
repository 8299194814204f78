"""Tills of one store vouch for each other: signed UDP claims before a single-use coupon is
accepted (docs/store-peers.md)."""
