"""Local web app: cashier screen, manager dashboard, POS integration API."""
