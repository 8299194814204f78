"""Outputs after a decision: a customer pole display and a beeper/LED, each with a no-op twin."""
