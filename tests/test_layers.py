"""The layers of docs/architecture.md hold in the source: every import of one of our
packages from another is one the table allows, and no private name crosses packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_ROW = re.compile(r"^\| `(\w+)` \| .* \| (.*) \|$")


def layers() -> dict[str, set[str]]:
    """package -> the packages it may import, read from docs/architecture.md's table."""
    allowed: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = TABLE_ROW.match(line)
        if m:
            allowed[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return allowed


def imports(pkg: str) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, module, names) for every absolute import in a package."""
    out = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Import):
                out += [(rel, node.lineno, a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.append((rel, node.lineno, node.module, [a.name for a in node.names]))
    return out


def test_the_table_names_every_package_and_nothing_runs_back_up() -> None:
    allowed = layers()
    assert set(allowed) == {"ports", "coupons", "drivers", "sync", "kiosk_ui", "terminal"}

    # The table itself is acyclic: follow every row down and never come back.
    def below(pkg: str, seen: tuple[str, ...] = ()) -> None:
        assert pkg not in seen, f"layers run in a circle: {' -> '.join((*seen, pkg))}"
        for lower in allowed[pkg]:
            below(lower, (*seen, pkg))

    for pkg in allowed:
        below(pkg)


def test_every_import_runs_down_the_layers() -> None:
    allowed = layers()
    wrong = []
    for pkg, may in allowed.items():
        for rel, line, module, _ in imports(pkg):
            top = module.split(".")[0]
            if top in allowed and top != pkg and top not in may:
                wrong.append(f"{rel}:{line} imports {module} ({pkg} may import: {sorted(may)})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_packages() -> None:
    allowed = layers()
    wrong = []
    for pkg in allowed:
        for rel, line, module, names in imports(pkg):
            top = module.split(".")[0]
            if top not in allowed or top == pkg:
                continue
            private = [n for n in names if n.startswith("_")]
            private += [p for p in module.split(".") if p.startswith("_")]
            if private:
                wrong.append(f"{rel}:{line} from {module} import {', '.join(private)}")
    assert not wrong, "\n".join(wrong)
