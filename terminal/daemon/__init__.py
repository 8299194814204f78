"""The terminal daemon: config, the engine worker, and the wiring of drivers, engine, sync
and kiosk (the one place allowed to import all of them)."""
