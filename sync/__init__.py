"""Sync: wire protocol, terminal-side client, and the reference central service."""
