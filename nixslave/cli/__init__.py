"""The `nixslave` command line: verb groups dispatched through one table.

Every error that nixslave raises on purpose (and every netconf error, which
carries the same where/what/hint attributes without importing nixslave) ends
as one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import typer

from nixslave import interrupt
from nixslave.cli._common import state

app = typer.Typer(
    name="nixslave",
    help="Build, materialize and repair NixOS machines that are configured from the outside.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# verb group -> module under nixslave.cli that defines `app`
GROUPS: dict[str, tuple[str, str]] = {
    "root": ("nixslave.cli.root", "Build and prepare profile-less roots."),
    "image": ("nixslave.cli.image", "Build and inspect disk images."),
    "net": ("nixslave.cli.net", "Plan, render and draw network topologies."),
    "gc": ("nixslave.cli.gc", "Host GC roots that keep guest closures alive."),
    "fleet": ("nixslave.cli.fleet", "Fleet files: JSON Schema and validation."),
}
# single commands -> (module, function)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("nixslave.cli.doctor", "doctor"),
    "run": ("nixslave.cli.run", "run"),
    # a fleet's life: nixslave.cli.fleet
    "up": ("nixslave.cli.fleet", "up"),
    "status": ("nixslave.cli.fleet", "status"),
    "console": ("nixslave.cli.fleet", "console"),
    "logs": ("nixslave.cli.fleet", "logs"),
    "exec": ("nixslave.cli.fleet", "exec_"),
    "switch": ("nixslave.cli.fleet", "switch"),
    "down": ("nixslave.cli.fleet", "down"),
}


@app.callback()
def _root_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    state.debug = debug


def _load(module: str) -> object | None:
    """A verb module, or None while that verb group does not exist yet."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


def _register() -> None:
    for name, (module, help_text) in GROUPS.items():
        if (mod := _load(module)) is not None:
            app.add_typer(mod.app, name=name, help=help_text)  # type: ignore[attr-defined]
    for name, (module, func) in COMMANDS.items():
        if (mod := _load(module)) is not None:
            app.command(name=name)(getattr(mod, func))


_register()


def _is_ours(exc: BaseException) -> bool:
    return all(hasattr(exc, a) for a in ("where", "what", "hint"))


def format_error(exc: BaseException) -> str:
    """One line: where, what and a hint."""
    layer = getattr(exc, "layer", "error")
    where = getattr(exc, "where", "")
    what = getattr(exc, "what", str(exc))
    hint = getattr(exc, "hint", "")
    line = f"nixslave {layer}: " + (f"{where}: " if where else "") + " ".join(str(what).split())
    if hint:
        line += f" (hint: {hint})"
    return line


def usage_line(exc: BaseException) -> str:
    """A click/typer usage error as nixslave's one line: where, what, a hint."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "nixslave"
    what = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    return f"nixslave usage: {where}: {what} (hint: see '{where} --help')"


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so scratch files are removed on the way out.
    interrupt.install()
    rc = _main(argv)
    if interrupt.received() is not None and rc in (0, 130):
        # The interrupt was swallowed somewhere (or arrived at the very end):
        # the exit code still says the command did not complete.
        print("nixslave: interrupted", file=sys.stderr)
        return interrupt.exit_code()
    return rc


def _main(argv: list[str] | None) -> int:
    try:
        # Without standalone mode typer returns Exit codes (and Ctrl-C's 130)
        # instead of raising them.
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            if rc == 130 and interrupt.received() is None:
                print("nixslave: interrupted", file=sys.stderr)
            return rc
    except SystemExit as exc:
        return int(exc.code or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("nixslave: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if interrupt.received() is None:
            print("nixslave: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place that turns errors into exit codes
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click usage
            if exc.format_message().strip():  # empty: typer already printed the help
                print(usage_line(exc), file=sys.stderr)
            return 2
        if state.debug:
            traceback.print_exc()
        if _is_ours(exc):
            print(format_error(exc), file=sys.stderr)
            return 2
        if state.debug:
            return 1
        print(f"nixslave: internal error: {type(exc).__name__}: {exc} "
              "(hint: rerun with --debug and report it)", file=sys.stderr)
        return 1
    return 0
