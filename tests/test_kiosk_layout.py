"""The kiosk's module layout (docs/kiosk.md): screens as module-level routers that reach the
daemon through kiosk_ui.daemon_port's Protocol (the POS API too), with no `Any` in any
signature."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi import APIRouter

from kiosk_ui import api, cashier, manager_pages, metrics

KIOSK = Path(cashier.__file__).parent


def _any_in(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == "Any")
        or (isinstance(n, ast.Attribute) and n.attr == "Any")
        for n in ast.walk(node)
    )


@pytest.mark.parametrize("path", sorted(KIOSK.glob("*.py")))
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


@pytest.mark.parametrize("module", [api, cashier, manager_pages, metrics])
def test_screens_are_module_level_routers(module: object) -> None:
    assert isinstance(getattr(module, "router", None), APIRouter)
    assert callable(getattr(module, "setup", None))
