"""The till application: the daemon (`redeem run`) and the `redeem` command line, the one
place that wires drivers, the coupon core, the sync client and the kiosk together."""
