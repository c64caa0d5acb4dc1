"""Fleet files: a topology plus what runs on each of its nodes.

A fleet file is a netconf topology (the same keys, checked by netconf
itself) with two more sections::

    name: lab
    nodes: {a: {kind: vm}, r: {kind: router}, c: {kind: container}}
    links: [[a, r], [r, c]]
    defaults: {memory: 256}          # applies to every machine
    machines:
      a: {demo: true, layout: shared}
      c: {backend: container}
      r: {config: ./router.nix, agent: true, switchable: true}

A node without a ``machines`` entry runs the demo system, as a container
when its kind is ``container`` and as a VM otherwise.  The topology name is
the fleet's name; it and every node name become file names, socket paths
and GC roots, so they pass :func:`nixslave.spec.check_name` before anything
touches a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nixslave.errors import SpecError
from nixslave.netconf import Topology, TopologyError, topology_from_data
from nixslave.netconf.load import read_data, validation_to_error
from nixslave.spec import Boot, Layout, MachineSpec, Share, check_name

FLEET_KEYS = ("machines", "defaults")
Backend = Literal["vm", "container"]


class Machine(BaseModel):
    """What runs on one node and how (every field optional; see ``defaults``)."""

    model_config = ConfigDict(extra="forbid")

    demo: bool | None = Field(None, description="The built-in demo system (the default).")
    config: Path | None = Field(None, description="A NixOS configuration file, relative to "
                                "the fleet file.")
    flake: str | None = Field(None, description="A flake reference, path#name.")
    toplevel: str | None = Field(None, description="An already built system toplevel.")
    nixpkgs: Path | None = Field(None, description="nixpkgs for a config source.")
    backend: Backend | None = Field(None, description="vm or container; by default "
                                    "container for container nodes, vm otherwise.")
    layout: Layout | None = None
    share: Share | None = None
    boot: Boot | None = None
    memory: int | None = Field(None, description="MiB.")
    cpus: int | None = None
    with_nix: bool | None = None
    ssh_keys: list[str] | None = None
    agent: bool | None = Field(None, description="The QEMU guest agent in NixOS guests "
                               "(default true: exec and switch need it).")
    switchable: bool | None = Field(None, description="Keep switch-to-configuration in "
                                    "NixOS guests so nixslave switch can switch them online.")
    host: str | None = Field(None, description="libvirt engine: the URI of the host this "
                             "machine runs on (default: --connect).")

    def merged(self, defaults: Machine | None) -> Machine:
        if defaults is None:
            return self
        data = defaults.model_dump(exclude_none=True)
        mine = self.model_dump(exclude_none=True)
        if any(k in mine for k in ("demo", "config", "flake", "toplevel")):
            for k in ("demo", "config", "flake", "toplevel", "nixpkgs"):
                data.pop(k, None)
        data.update(mine)
        return Machine.model_validate(data)


class FleetFile(Topology):
    """The JSON Schema of fleet files: a topology plus machines."""

    machines: dict[str, Machine] = Field(default_factory=dict)
    defaults: Machine | None = None

    @field_validator("machines")
    @classmethod
    def _names(cls, v: dict[str, Machine]) -> dict[str, Machine]:
        for name in v:
            check_name(name)
        return v


class Fleet:
    """A loaded fleet: its topology, machines, and where it came from."""

    def __init__(self, topology: Topology, machines: dict[str, Machine],
                 defaults: Machine | None, source: Path | None) -> None:
        self.topology = topology
        self.name = topology.name
        self.machines = machines
        self.defaults = defaults
        self.source = source

    @property
    def base(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    def nodes(self) -> list[str]:
        return sorted(self.topology.nodes)

    def machine(self, node: str) -> Machine:
        return self.machines.get(node, Machine.model_validate({})).merged(self.defaults)

    def backend(self, node: str) -> Backend:
        m = self.machine(node)
        if m.backend is not None:
            return m.backend
        return "container" if self.topology.nodes[node].kind == "container" else "vm"

    def spec(self, node: str, **override: Any) -> MachineSpec:
        """The node's MachineSpec: a demo keeps running, a VM gets its agent."""
        m = self.machine(node)
        data: dict[str, Any] = {"name": node, "halt": False}
        sources = {k: getattr(m, k) for k in ("demo", "config", "flake", "toplevel")
                   if getattr(m, k)}
        if override:
            sources = {k: v for k, v in override.items()
                       if k in ("demo", "config", "flake", "toplevel") and v}
        if not sources:
            data["demo"] = True
        for k, v in sources.items():
            data[k] = (self.base / v).resolve() if k == "config" else v
        if m.nixpkgs is not None and "config" in data:
            data["nixpkgs"] = (self.base / m.nixpkgs).resolve()
        for k in ("layout", "share", "boot", "memory", "cpus", "with_nix", "switchable"):
            if getattr(m, k) is not None:
                data[k] = getattr(m, k)
        if m.ssh_keys:
            data["ssh_keys"] = tuple(m.ssh_keys)
        data["agent"] = m.agent if m.agent is not None else self.backend(node) == "vm"
        if self.backend(node) == "container":
            for k in ("layout", "boot", "share"):
                if k in data and data[k] != MachineSpec.model_fields[k].default:
                    raise SpecError(f"a container has no {k} (it is {data[k]!r} here)",
                                    where=f"{self._where()}machines.{node}.{k}",
                                    hint="drop it, or use backend: vm")
        try:
            return MachineSpec.parse(data)
        except SpecError as exc:
            exc.where = f"{self._where()}machines.{node}" + exc.where.removeprefix(
                f"machine {node}")
            raise

    def _where(self) -> str:
        return f"{self.source}: " if self.source is not None else ""

    def check(self) -> None:
        """Every machine names a node, and every node's spec is valid."""
        for name in self.machines:
            if name not in self.topology.nodes:
                raise SpecError(f"machine {name!r} is not a node of the topology",
                                where=f"{self._where()}machines.{name}",
                                hint="add it under nodes, or remove the entry")
        for node in self.topology.nodes:
            try:
                check_name(node)
            except ValueError as exc:
                raise SpecError(str(exc), where=f"{self._where()}nodes.{node}",
                                hint="node names become machine names: a-z, 0-9 and '-'"
                                ) from None
            self.spec(node)


def fleet_from_data(data: Any, *, source: Path | None = None) -> Fleet:
    """Validate fleet data (a topology plus ``machines``/``defaults``)."""
    where = str(source) if source is not None else ""
    if not isinstance(data, dict):
        raise TopologyError("a fleet file must be a mapping with 'name', 'nodes' and "
                            "'machines'", where=where or "fleet",
                            hint="start the file with 'name: <fleet name>'")
    try:
        parsed = FleetFile.model_validate(data)
    except ValidationError as exc:
        raise validation_to_error(exc, where) from None
    topo = topology_from_data({k: v for k, v in data.items() if k not in FLEET_KEYS},
                              source=where)
    try:
        check_name(topo.name)
    except ValueError as exc:
        raise SpecError(str(exc), where=f"{where}: name" if where else "name",
                        hint="the fleet's name becomes a directory name: a-z, 0-9 and '-'"
                        ) from None
    fleet = Fleet(topo, dict(parsed.machines), parsed.defaults, source)
    fleet.check()
    return fleet


def load_fleet(path: Path) -> Fleet:
    """Read and validate a fleet file (.yml/.yaml, .json or .toml)."""
    path = Path(path).absolute()
    return fleet_from_data(read_data(path), source=path)


def topology_data(fleet: Fleet) -> dict[str, Any]:
    """The topology alone, as netconf (and the artifacts' recorded topology) reads it."""
    return fleet.topology.model_dump(mode="json", exclude_none=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of fleet files (``nixslave fleet schema``)."""
    schema = FleetFile.model_json_schema()
    schema["title"] = "nixslave fleet"
    return schema
