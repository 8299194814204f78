"""The reference central service: issues coupons, publishes the ledger, reconciles."""
