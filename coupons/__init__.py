"""edge-redeem's domain core: coupon tokens, the signed ledger, rules, the redemption
engine and its journal. Imports no device, web, sync or application code."""
