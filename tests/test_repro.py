"""Images are the same bytes whoever builds them: umask and build time do not leak in."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nix

_MAIN = "import sys; from nixslave.cli import main; sys.exit(main())"


def _build(out: Path, umask: int, *args: str) -> str:
    """One CLI build under ``umask``; returns the image's sha256."""
    def pre() -> None:
        os.umask(umask)
    proc = subprocess.run([sys.executable, "-c", _MAIN, "image", "build", "--demo",
                           "--format", "raw", "-o", str(out), *args],
                          capture_output=True, text=True, preexec_fn=pre, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["disk", "store-disk"])
def test_umask_does_not_change_the_image(tmp_path: Path, layout: str) -> None:
    """Directories made under umask 077 were 0700 inside the image (and 0775
    under 002), so the same inputs gave three different images."""
    sums = {m: _build(tmp_path / f"u{m:o}.raw", m, "--layout", layout)
            for m in (0o022, 0o002, 0o077)}
    assert len(set(sums.values())) == 1, sums


def test_with_nix_images_are_reproducible(tmp_path: Path) -> None:
    """nix-store --load-db stamps registrationTime with the clock."""
    a = _build(tmp_path / "a.raw", 0o022, "--with-nix")
    b = _build(tmp_path / "b.raw", 0o022, "--with-nix")
    assert a == b
