"""The committed OpenAPI document of the terminal-facing endpoints
(docs/openapi-terminal.json) is what the central generates, so it never goes stale, and the
document describes the answers the central really gives (400 problems, not FastAPI's 422;
bearer tokens on admin routes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sync import protocol

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "openapi-terminal.json"


def _openapi(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    return subprocess.run(
        [sys.executable, "-m", "sync.central.cli", "openapi", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_the_committed_document_is_what_the_central_generates(tmp_path: Path) -> None:
    out = tmp_path / "openapi-terminal.json"
    r = _openapi("--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text() == COMMITTED.read_text(), (
        "docs/openapi-terminal.json is stale: run "
        "`redeem-central openapi --out docs/openapi-terminal.json`"
    )


def test_the_terminal_document_holds_the_terminal_endpoints_only() -> None:
    doc = json.loads(COMMITTED.read_text())
    assert set(doc["paths"]) == {
        protocol.ENROLL,
        f"{protocol.PREFIX}/trust-anchor",
        protocol.LEDGER,
        protocol.JOURNAL,
        protocol.FLAGS,
        protocol.CHECK,
    }
    schemas = doc["components"]["schemas"]
    text = json.dumps(doc)
    for ref in {p.split("/")[-1] for p in _refs(doc)}:
        assert ref in schemas, f"{ref} is referenced but not defined"
    assert "HTTPValidationError" not in text and "securitySchemes" not in doc["components"]
    # Only the journal answers 422 (JSON, but not a batch).
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert ("422" in op["responses"]) == (path == protocol.JOURNAL), path


def test_admin_routes_need_a_bearer_token_and_answer_400_not_422() -> None:
    r = _openapi("--all")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [scheme] = doc["components"]["securitySchemes"].values()
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    admin = [
        op for path, ops in doc["paths"].items() if path.startswith(protocol.ADMIN_PREFIX)
        for op in ops.values()
    ]  # fmt: skip
    assert len(admin) >= 7
    for op in admin:
        assert op["security"] and "401" in op["responses"] and "422" not in op["responses"]
    flags_get = doc["paths"][f"{protocol.ADMIN_PREFIX}/flags"]["get"]
    assert flags_get["responses"]["400"]["content"]["application/problem+json"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
