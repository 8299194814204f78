"""The scripted demo: one store, one till, one Wednesday of coupons (`make demo`)."""
