"""The Meta key registry: every key the source reads or writes is named in coupons.journal.meta."""

from __future__ import annotations

import ast
from pathlib import Path

from coupons.journal import meta

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coupons", "sync", "terminal", "kiosk_ui")


def _literal_keys() -> set[tuple[str, str]]:
    found = set()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                key = node.args[0]
                if name in ("get_meta", "set_meta") and isinstance(key, ast.Constant):
                    found.add((f"{path.relative_to(ROOT)}:{node.lineno}", str(key.value)))
    return found


def test_every_meta_key_used_is_registered() -> None:
    # A key typed as a string where no constant is used yet must still be one the registry
    # holds: two spellings of one key would be two keys.
    unknown = sorted(where for where, key in _literal_keys() if key not in meta.KEYS)
    assert not unknown


def test_registry_values_are_distinct() -> None:
    names = [n for n in dir(meta) if n.isupper() and n != "KEYS"]
    values = [getattr(meta, n) for n in names]
    assert len(set(values)) == len(values) == len(meta.KEYS)
