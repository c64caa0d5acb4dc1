"""`nixslave doctor`."""

from __future__ import annotations

import typer

from nixslave.cli._common import emit_json, err_console
from nixslave.doctor import CHECKS, run_checks
from nixslave.runtime import accel

_STYLE = {"ok": "[green]ok[/green]  ", "warn": "[yellow]warn[/yellow]", "fail": "[red]fail[/red]"}


def doctor(
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    check: list[str] = typer.Option(None, "--check", help=f"Only these: {', '.join(CHECKS)}."),
) -> None:
    """Check that this host can build, boot and edit nix-slave machines."""
    unknown = sorted(set(check or []) - set(CHECKS))
    if unknown:
        raise typer.BadParameter(f"unknown check {unknown[0]!r}; known: {', '.join(CHECKS)}")

    def started(name: str) -> None:
        if not json_out and err_console.is_terminal:
            err_console.print(f"[dim]checking {name}…[/dim]")

    findings = run_checks(check or None, on_start=started)
    if json_out:
        out: dict[str, object] = {"ok": all(f.status != "fail" for f in findings),
                                  "checks": [f.to_json() for f in findings]}
        if not check or "kvm" in check:
            a = accel.detect()
            out["accelerator"] = {"name": a.name, "kvm_usable": a.kvm_usable,
                                  "reason": a.reason}
        emit_json(out)
    else:
        for f in findings:
            line = f"{_STYLE[f.status]} {f.check:<15} {f.detail}"
            if f.hint and f.status != "ok":
                line += f"\n      [dim]hint: {f.hint}[/dim]"
            err_console.print(line, highlight=False)
    if any(f.status == "fail" for f in findings):
        raise typer.Exit(1)
