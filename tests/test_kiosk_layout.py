"""The kiosk's module layout (docs/kiosk.md): screens as module-level routers that reach the
daemon through kiosk_ui.daemon_port's Protocol, with no `Any` in a signature outside the
POS API (kiosk_ui/api.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi import APIRouter

from kiosk_ui import cashier, manager_pages, metrics

KIOSK = Path(cashier.__file__).parent


def _any_in(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == "Any")
        or (isinstance(n, ast.Attribute) and n.attr == "Any")
        for n in ast.walk(node)
    )


@pytest.mark.parametrize("path", sorted(p for p in KIOSK.glob("*.py") if p.name != "api.py"))
def test_no_any_in_a_signature(path: Path) -> None:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        args = node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        annotations = [a.annotation for a in params if a is not None and a.annotation]
        if any(_any_in(a) for a in [*annotations, node.returns] if a is not None):
            found.append(f"{node.name} (line {node.lineno})")
    assert not found, f"{path.name}: Any in the signature of {', '.join(found)}"


@pytest.mark.parametrize("module", [cashier, manager_pages, metrics])
def test_screens_are_module_level_routers(module: object) -> None:
    assert isinstance(getattr(module, "router", None), APIRouter)
    assert callable(getattr(module, "setup", None))
