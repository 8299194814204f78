"""edge-redeem terminal: the offline domain core and the terminal daemon."""
