"""Shared command-line plumbing for `redeem` and `redeem-central`: reading documents,
printing results as text or JSON, turning expected errors into messages, not tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeAlias

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2

# A sub-command's function: its parsed arguments in, its exit status out.
Command = Callable[[argparse.Namespace], int]
# A parser's table of sub-commands (argparse keeps the class's name private).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class AddCommand(Protocol):
    """`redeem`'s helper that adds a sub-command with its --data, --lang and --json."""

    def __call__(
        self, parent: Subcommands, name: str, func: Command, help_: str
    ) -> argparse.ArgumentParser: ...


class UserError(Exception):
    """A problem the person at the keyboard can fix; printed without a traceback."""


def read_document(path: str) -> object:
    """A JSON or TOML file (by extension; JSON first for anything else); the caller narrows
    it (a TOML document may hold times, which JSON has not)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if path.endswith(".toml"):
        try:
            return tomllib.loads(text)
        except RecursionError:
            raise UserError(f"{path} is nested too deeply") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path} is not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a basket or campaign") from None


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        print(text)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_main(prog: str, args: argparse.Namespace, expected: tuple[type[Exception], ...]) -> int:
    """Run a subcommand; expected errors and file-system errors become one line on stderr."""
    try:
        return int(args.func(args))
    except expected as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # `... | head` closed the pipe: not an error
            return EXIT_OK
        print(f"{prog}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
    return EXIT_ERROR


def writable_dir(path: Path) -> None:
    """Fail before doing work whose result could not be written."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory")
