"""Run the nixslave CLI in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys

_MAIN = "import sys; from nixslave.cli import main; sys.exit(main())"


def nixslave(*args: str, timeout: float | None = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _MAIN, *args], capture_output=True,
                          text=True, timeout=timeout)


def nixslave_popen(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _MAIN, *args], text=True,  # type: ignore[call-overload]
                            **kw)
