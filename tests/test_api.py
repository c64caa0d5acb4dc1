"""The public API: its names, their signatures, their types and their docs.

``nixslave.__all__`` and ``nixslave.netconf.__all__`` are the whole public
surface (docs/api.md).  These tests pin it: the names resolve lazily and
cheaply, every signature matches the hand-written list in
tests/data/api_surface.txt, ``mypy --strict`` accepts a typed caller, the
pdoc reference builds without a warning, and the Nix packaging files parse.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import nixslave
from nixslave import netconf

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
SURFACE = REPO / "tests" / "data" / "api_surface.txt"
PUBLIC = (("nixslave", nixslave), ("nixslave.netconf", netconf))
# Public names whose docstring lives in a module that is not yet written
# with an example; each one here is a gap in the reference (docs/api.md).
# What `import nixslave` must not load: its dependencies, and any submodule.
HEAVY = ("pydantic", "networkx", "yaml", "typer", "rich", "guestfs")


# -- rendering signatures the way api_surface.txt writes them -------------------

def _annotation(a: Any) -> str | None:
    if a is inspect.Parameter.empty:
        return None
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _default(v: Any) -> str:
    if inspect.isclass(v) or inspect.isfunction(v):
        return v.__name__
    if v is dataclasses.MISSING or v is PydanticUndefined:
        return "<required>"
    return repr(v)


def _signature(sig: inspect.Signature) -> str:
    parts: list[str] = []
    star = False
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            star = True
        stars = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        text = stars + p.name
        if (ann := _annotation(p.annotation)) is not None:
            text += f": {ann}"
        if p.default is not p.empty:
            text += f" = {_default(p.default)}" if ann else f"={_default(p.default)}"
        parts.append(text)
        last_positional = i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY
        if p.kind is p.POSITIONAL_ONLY and last_positional:
            parts.append("/")
    out = f"({', '.join(parts)})"
    if (ret := _annotation(sig.return_annotation)) is not None:
        out += f" -> {ret}"
    return out


def _model_signature(cls: type[BaseModel]) -> str:
    """A pydantic model's keyword-only constructor, with the annotations as
    written in its source (pydantic's own signature spells them the way the
    installed pydantic version prints types)."""
    written: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("nixslave"):
            written.update(inspect.get_annotations(klass))
    parts = []
    for name, info in cls.model_fields.items():
        text = f"{name}: {written[name]}"
        if info.default_factory is not None:
            text += " = <factory>"
        elif info.default is not PydanticUndefined:
            text += f" = {_default(info.default)}"
        parts.append(text)
    return f"(*, {', '.join(parts)})"


def _members(qual: str, cls: type) -> list[str]:
    """Public methods and properties that nixslave itself defines on ``cls``."""
    out = []
    for attr in sorted(dir(cls)):
        if attr.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if attr in k.__dict__), None)
        if owner is None or not owner.__module__.startswith("nixslave"):
            continue
        value = owner.__dict__[attr]
        if isinstance(value, property):
            ret = _annotation(inspect.signature(value.fget).return_annotation)  # type: ignore[arg-type]
            out.append(f"{qual}.{attr}: property -> {ret}")
        elif isinstance(value, classmethod | staticmethod):
            out.append(f"{qual}.{attr}{_signature(inspect.signature(getattr(cls, attr)))}")
        elif inspect.isfunction(value):
            out.append(f"{qual}.{attr}{_signature(inspect.signature(value))}")
    return out


def surface() -> list[str]:
    """Every public name of both namespaces, one line per signature."""
    lines = []
    for modname, mod in PUBLIC:
        for name in sorted(mod.__all__):
            obj = getattr(mod, name)
            qual = f"{modname}.{name}"
            if inspect.ismodule(obj):
                lines.append(f"{qual}: module {obj.__name__}")
            elif inspect.isclass(obj) and getattr(obj, "_is_protocol", False):
                lines.append(f"{qual}.__call__{_signature(inspect.signature(obj.__call__))}")
            elif inspect.isclass(obj):
                if issubclass(obj, BaseModel):
                    lines.append(f"{qual}{_model_signature(obj)}")
                else:
                    lines.append(f"{qual}{_signature(inspect.signature(obj))}")
                lines += _members(qual, obj)
            else:
                lines.append(f"{qual}{_signature(inspect.signature(obj))}")
    return lines


def _expected_surface() -> list[str]:
    return [line for line in SURFACE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


# -- names -----------------------------------------------------------------------

def test_all_matches_the_lazy_table_and_the_type_checking_imports() -> None:
    """``__all__``, the lazy table and the TYPE_CHECKING imports name the same set.

    Catches a name added to ``__all__`` but not to the table (AttributeError
    on first use), or not to the TYPE_CHECKING block (type checkers and IDEs
    then report ``nixslave.X`` as missing although it works at run time).
    """
    tree = ast.parse((REPO / "nixslave" / "__init__.py").read_text())
    checked: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                checked |= {a.asname or a.name for a in stmt.names}
    exports = set(nixslave._EXPORTS)
    assert set(nixslave.__all__) == exports == checked
    assert len(nixslave.__all__) == len(exports)
    assert nixslave.__dir__() == [*sorted(exports), "__version__"]


@pytest.mark.parametrize("name", sorted(nixslave._EXPORTS))
def test_each_public_name_is_its_module_object(name: str) -> None:
    """``nixslave.X`` is the very object its module defines, not a copy or a stub.

    Catches a typo in the lazy table's module or attribute (an ImportError
    or AttributeError that only the first caller of that name would see).
    """
    module, attr = nixslave._EXPORTS[name]
    mod = __import__(module, fromlist=["_"])
    assert getattr(nixslave, name) is (mod if attr is None else getattr(mod, attr))


def test_unknown_names_raise_attribute_error() -> None:
    """An unknown attribute is an AttributeError, as ``from nixslave import sub``
    needs: that statement falls back to importing the submodule only on
    AttributeError.  A ``__getattr__`` that raised KeyError would break
    every ``from nixslave import nix`` inside the package."""
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = nixslave.nope
    from nixslave import rundir  # a submodule, not a public name

    assert rundir.__name__ == "nixslave.rundir"


def test_import_loads_nothing_heavy() -> None:
    """``import nixslave`` imports no dependency and no submodule.

    Catches an eager import slipped into nixslave/__init__.py (say ``from
    nixslave.spec import MachineSpec``), which makes every ``import
    nixslave`` and every CLI start pay for pydantic and more.
    """
    code = ("import sys, nixslave; print(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {HEAVY!r} or m.startswith('nixslave.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.strip()
    assert out == "[]"


# -- signatures ------------------------------------------------------------------

def test_public_signatures_match_the_written_list() -> None:
    """Every public name and signature equals tests/data/api_surface.txt.

    The list is written by hand, so any change to the public surface (a
    renamed parameter, a new required argument, a changed default or type,
    a name dropped from ``__all__``) fails here until the list is edited on
    purpose, with its deprecation and changelog entry (docs/api.md).
    """
    actual, expected = sorted(surface()), sorted(_expected_surface())
    assert len(set(expected)) == len(expected), "api_surface.txt lists a line twice"
    if actual != expected:
        diff = "\n".join(difflib.unified_diff(expected, actual, "api_surface.txt", "code",
                                              lineterm="", n=0))
        pytest.fail(f"the public API changed:\n{diff}")


def test_every_public_function_reports_progress_the_same_way() -> None:
    """A public function that takes a progress callback types it as Progress.

    Catches a new operation added with its own ``Callable[[str], None]`` or
    an untyped ``progress``, which would split the one callback protocol.
    """
    for line in _expected_surface():
        if "progress" in line:
            assert "progress: Progress | None = None" in line, line


# -- docs ------------------------------------------------------------------------

@pytest.mark.parametrize("qual", [f"{m}.{n}" for m, mod in PUBLIC for n in sorted(mod.__all__)])
def test_every_public_name_has_a_docstring_with_an_example(qual: str) -> None:
    """Each public name documents itself with a ``>>>`` example.

    Catches a name made public without documentation: the reference would
    show a bare signature.
    """
    modname, _, name = qual.rpartition(".")
    obj = getattr(sys.modules[modname], name)
    doc = inspect.getdoc(obj) or ""
    assert re.search(r"^\s*>>> ", doc, re.MULTILINE), f"{qual} has no >>> example"


def test_mypy_strict_accepts_a_typed_caller(tmp_path: Path) -> None:
    """``mypy --strict`` passes on a caller that uses every public name, the
    embedding example and the package's ``__init__`` (and every module they
    reach).

    tests/data/api_usage.py names every parameter and pins every result with
    ``assert_type``, so a public function that loses a parameter's or its
    result's annotation (the result becomes ``Any``), renames a parameter
    or changes a result type fails this test.
    """
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e .[test])")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "tests/data/api_usage.py", "examples/embed.py", "nixslave/__init__.py"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    """The pdoc reference of both public namespaces builds with warnings as errors
    and documents every public name.

    Catches a docstring or annotation pdoc cannot render (it warns), and a
    public name pdoc cannot reach through the lazy ``__getattr__``.
    """
    pytest.importorskip("pdoc", reason="pdoc is not installed (pip install -e .[test])")
    out = tmp_path / "api"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "pdoc", "--no-show-source", "-o", str(out),
         "nixslave", r"!nixslave\.(?!netconf$).*"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pages = {"nixslave": (out / "nixslave.html").read_text(),
             "nixslave.netconf": (out / "nixslave" / "netconf.html").read_text()}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")) == [
        "index.html", "nixslave.html", "nixslave/netconf.html"]  # no internal module
    for modname, mod in PUBLIC:
        for name in mod.__all__:
            if name != "netconf":
                assert f'id="{name}"' in pages[modname], f"{modname}.{name} is not documented"


# -- Nix packaging ---------------------------------------------------------------

NIX_FILES = ("flake.nix", "default.nix")


@pytest.mark.tools("nix-instantiate")
@pytest.mark.parametrize("name", NIX_FILES)
def test_nix_file_parses(name: str) -> None:
    """flake.nix and default.nix are valid Nix: a syntax error, or a variable
    used outside any scope (Nix resolves those while parsing), fails here."""
    proc = subprocess.run(["nix-instantiate", "--parse", name], capture_output=True,
                          text=True, cwd=REPO, env=_nix_env())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.tools("nix-instantiate")
def test_flake_outputs_that_need_no_nixpkgs_evaluate() -> None:
    """The flake's guest module is the in-repo slave.nix and is a NixOS module.

    Evaluated without nixpkgs (its input is a ``throw``, so anything that
    touches it fails): catches ``lib.slaveModule`` pointing at a moved or
    renamed file, and outputs that force nixpkgs where they should not.
    """
    expr = """
      let f = import ./flake.nix;
          o = f.outputs { self = o; nixpkgs = throw "nixpkgs is not available here"; };
          m = import o.lib.slaveModule { lib = { mkDefault = v: v; }; };
      in { module = toString o.lib.slaveModule; channels = m.nix.channel.enable;
           hostModule = builtins.isFunction o.nixosModules.default;
           url = f.inputs.nixpkgs.url; }
    """
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                          capture_output=True, text=True, cwd=REPO, env=_nix_env())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "module": str(REPO / "nixslave" / "nix" / "slave.nix"), "channels": False,
        "hostModule": True, "url": "github:NixOS/nixpkgs/nixos-unstable"}


def test_default_nix_replaces_paths_that_exist() -> None:
    """Every path default.nix's postPatch replaces is still in the files it names.

    ``substituteInPlace --replace-fail`` fails the Nix build when its text is
    gone, so a Debian path renamed in the Python code would break the
    package on a machine that has nixpkgs; this catches it here, where there
    is none.
    """
    text = (REPO / "default.nix").read_text()
    post_patch = text[text.index("postPatch = ''"):].split("'';")[0]
    calls = post_patch.split("substituteInPlace")[1:]
    assert len(calls) == 3
    for call in calls:
        tokens = [t for t in call.split() if t != "\\"]  # line continuations
        files = tokens[:tokens.index("--replace-fail")]
        olds = [tokens[i + 1] for i, t in enumerate(tokens) if t == "--replace-fail"]
        assert files and olds
        for f in files:
            source = (REPO / f).read_text()
            for old in olds:
                assert old in source, f"{old} is not in {f}"


def _nix_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NIX_CONFIG", "build-users-group =\nsandbox = false\nsubstituters =\n"
                   "experimental-features = nix-command")
    return env


def test_pdoc_and_mypy_are_in_the_test_extra() -> None:
    """scripts/test.sh installs the ``test`` extra; the checks above need mypy
    (with PyYAML's stubs) and pdoc, or they would skip on a fresh machine."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=\[]", d)[0] for d in extras["test"]}
    assert {"mypy", "pdoc", "types-PyYAML"} <= names
