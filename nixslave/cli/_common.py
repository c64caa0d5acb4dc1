"""Shared CLI state and output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console


@dataclass
class _State:
    debug: bool = False


state = _State()
err_console = Console(stderr=True, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Machine-readable output on stdout, nothing else there."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def spec_data(
    *, name: str, demo: bool, config: Path | None, nixpkgs: Path | None,
    toplevel: str | None, flake: str | None, **extra: Any,
) -> dict[str, Any]:
    """The MachineSpec input assembled from the shared source options."""
    data: dict[str, Any] = {"name": name, "demo": demo}
    for key, value in (("config", config), ("nixpkgs", nixpkgs), ("toplevel", toplevel),
                       ("flake", flake)):
        if value is not None:
            data[key] = value
    data.update({k: v for k, v in extra.items() if v is not None})
    return data


def progress_printer(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr for long steps; nothing in --json mode."""
    def say(message: str) -> None:
        if not quiet:
            err_console.print(f"[dim]•[/dim] {message}", highlight=False)
    return say
