"""What a qemu guest and an nspawn container share: a process and a console log.

Both are judged by what they print, so waiting for the boot marker, echoing
the console and explaining an early exit are written once here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

from nixslave.errors import RunError
from nixslave.nixos import BOOT_MARKER


class ConsoleProcess(ABC):
    """A supervised process whose console goes to ``<rundir>/console.log``.

    Subclasses set the process, the run directory and how they are named in
    errors; everything that reads the console lives here.
    """

    program = "the guest"          # in "<program> exited (...) before ..."
    stderr_name = "stderr"         # the program's stderr file in the run directory
    poll_seconds = 0.2
    timeout_hint = ""              # appended to the timeout error's hint

    proc: subprocess.Popen[bytes] | None
    rundir: Path
    echo: bool
    _echo_pos: int

    @property
    @abstractmethod
    def name(self) -> str:
        """The guest's name, which prefixes each echoed console line."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where errors say they happened: ``vm NAME`` or ``container NAME``."""

    @property
    def console_log(self) -> Path:
        return self.rundir / "console.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.console_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _echo_new(self, text: str) -> None:
        if self.echo and len(text) > self._echo_pos:
            for line in text[self._echo_pos:].splitlines(keepends=True):
                sys.stderr.write(f"[{self.name}] {line}")
            self._echo_pos = len(text)

    def _exit_reason(self) -> str:
        code = self.proc.returncode if self.proc else None
        try:
            err = (self.rundir / self.stderr_name).read_text(errors="replace").strip()
        except OSError:
            err = ""
        last = err.splitlines()[-1] if err else ""
        return f"code {code}" + (f": {last}" if last else "")

    def _wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            self._echo_new(text)
            m = rx.search(text)
            if m:
                return m
            if not self.alive():
                raise RunError(f"{self.program} exited ({self._exit_reason()}) before "
                               f"{pattern!r}", where=self.where,
                               hint=f"see {self.console_log} and "
                                    f"{self.rundir}/{self.stderr_name}")
            if time.monotonic() > deadline:
                tail = " | ".join(text.strip().splitlines()[-3:])
                raise RunError(f"no {pattern!r} within {timeout:.0f}s; console ends: {tail}",
                               where=self.where,
                               hint=f"see {self.console_log}{self.timeout_hint}")
            time.sleep(self.poll_seconds)

    def _wait_boot(self, expected: str | None, timeout: float) -> str:
        booted = self._wait_for(rf"{BOOT_MARKER} (/nix/store/\S+)", timeout).group(1)
        if expected is not None and booted != expected:
            raise RunError(f"booted {booted}, expected {expected}", where=self.where,
                           hint="the image is stale")
        return booted
