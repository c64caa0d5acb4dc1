"""Shared CLI state and output helpers."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from rich.console import Console


@dataclass
class _State:
    debug: bool = False


state = _State()
err_console = Console(stderr=True)


def emit_json(data: Any) -> None:
    """Machine-readable output on stdout, nothing else there."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


@contextmanager
def step(message: str, *, quiet: bool = False) -> Iterator[None]:
    """A spinner on stderr for a long step; silent when stderr is not a tty or quiet."""
    if quiet or not err_console.is_terminal:
        yield
        return
    with err_console.status(message):
        yield
    err_console.print(f"[green]✓[/green] {message}")
