"""The NixOS renderer's output is valid Nix (nix-instantiate --parse).

What the modules evaluate to is checked in test_render_meaning.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nixslave.netconf.renderers import render_nixos
from nixslave.nix import nix_env

from .helpers import case_dirs, load_case

pytestmark = pytest.mark.nix


def test_nixos_modules_parse(tmp_path: Path) -> None:
    files = []
    for case in case_dirs():
        p = load_case(case)
        for node in p.nodes:
            f = tmp_path / f"{case.name}-{node}.nix"
            f.write_text(render_nixos(p, node))
            files.append(str(f))
    r = subprocess.run(["nix-instantiate", "--parse", *files], env=nix_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # every module takes lib (mkDefault, versionAtLeast, trivial.release)
    assert r.stdout.count("({ lib, ... }:") == len(files)
