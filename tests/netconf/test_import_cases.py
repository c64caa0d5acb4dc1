"""Importer cases: tests/data/netconf/import/<case>/.

Each case is a lab written for the test (``input.clab.yml`` or
``input.netlab.yml``) with, written by hand:

* ``expected.json``: the imported topology data, exactly;
* ``warnings.txt``: the exact warning lines, in order (empty: none);

or, for a lab the import must refuse, ``error.txt``: the one-line error.

An imported topology must also plan, keep the plan's promises (no MAC or
address twice, every routed address reachable) and survive being written
as YAML and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nixslave.netconf import NetconfError
from nixslave.netconf.clab import import_clab_lab
from nixslave.netconf.importers import Imported
from nixslave.netconf.load import read_data
from nixslave.netconf.netlab import import_netlab_lab

from .helpers import DATA, check_reachability, check_unique

pytestmark = pytest.mark.unit

CASES = sorted(d for d in (DATA / "import").iterdir() if d.is_dir())
GOOD = [c for c in CASES if not (c / "error.txt").exists()]
BAD = [c for c in CASES if (c / "error.txt").exists()]


def source(case: Path) -> Path:
    return next(p for p in sorted(case.iterdir()) if p.name.startswith("input."))


def run_import(case: Path) -> Imported:
    """Import the case's lab under its bare file name, so that warnings and
    errors read the same wherever the tests run."""
    src = source(case)
    data = read_data(src)
    if src.name.endswith(".clab.yml"):
        return import_clab_lab(data, source=src.name)
    return import_netlab_lab(data, source=src.name)


def reviewed(case: Path, name: str) -> str:
    path = case / name
    if not path.exists():
        pytest.fail(f"{path} is missing: write it by hand", pytrace=False)
    return path.read_text()


def test_enough_cases() -> None:
    assert len(GOOD) >= 12 and len(BAD) >= 4
    kinds = {source(c).name for c in CASES}
    assert kinds == {"input.clab.yml", "input.netlab.yml"}


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_import_matches_expected(case: Path) -> None:
    imp = run_import(case)
    expected: Any = json.loads(reviewed(case, "expected.json"))
    assert imp.data == expected
    # the order of nodes, segments and links is part of the result
    assert json.dumps(imp.data) == json.dumps(expected)


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_warnings_match_expected(case: Path) -> None:
    imp = run_import(case)
    assert [w.line() for w in imp.warnings] == reviewed(case, "warnings.txt").splitlines()


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_imported_topology_plans(case: Path) -> None:
    imp = run_import(case)
    p = imp.check()
    check_unique(p)
    if p.topology.routing == "static":
        check_reachability(p)
    text = yaml.safe_dump(imp.data, sort_keys=False)
    assert yaml.safe_load(text) == imp.data
    assert json.loads(json.dumps(imp.data)) == imp.data


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_refused_with_one_line(case: Path) -> None:
    with pytest.raises(NetconfError) as info:
        run_import(case).check()
    assert str(info.value) == reviewed(case, "error.txt").strip()
    assert "\n" not in str(info.value)
