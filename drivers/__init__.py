"""Hardware adapters that turn devices into Scan events; they know nothing of coupons."""
