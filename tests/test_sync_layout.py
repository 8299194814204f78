"""The sync package's house rules (issue 12): no function over 80 lines, no `Any` in any
signature, and the error kinds a round reports stay the words status files already hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sync
from sync.http import SyncErrorKind

SYNC = Path(sync.__file__).parent
MODULES = sorted([*SYNC.glob("*.py"), *SYNC.glob("central/*.py")])
MAX_LINES = 80


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _any_in(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == "Any")
        or (isinstance(n, ast.Attribute) and n.attr == "Any")
        for n in ast.walk(node)
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SYNC)))
def test_no_long_function(path: Path) -> None:
    long = [
        f"{f.name} ({(f.end_lineno or f.lineno) - f.lineno + 1} lines)"
        for f in _functions(path)
        if (f.end_lineno or f.lineno) - f.lineno + 1 > MAX_LINES
    ]
    assert not long, f"{path.name}: over {MAX_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SYNC)))
def test_no_any_in_a_signature(path: Path) -> None:
    found = []
    for node in _functions(path):
        args = node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        annotations = [a.annotation for a in params if a is not None and a.annotation]
        if any(_any_in(a) for a in [*annotations, node.returns] if a is not None):
            found.append(f"{node.name} (line {node.lineno})")
    assert not found, f"{path.name}: Any in the signature of {', '.join(found)}"


def test_error_kinds_keep_their_words() -> None:
    # Kept in Meta (coupons.sync_state), shown by `redeem sync status` and the kiosk, and
    # counted in metrics: renaming a value would split one kind in two across an update.
    assert [k.value for k in SyncErrorKind] == [
        "network",
        "timeout",
        "server",
        "refused",
        "protocol",
        "stopped",
        "internal",
    ]
    assert SyncErrorKind.TIMEOUT == "timeout" and f"{SyncErrorKind.REFUSED}" == "refused"
