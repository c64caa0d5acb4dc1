"""nixslave: NixOS machines that are configured from the outside, never from within.

The public API is the names in ``nixslave.__all__`` and
``nixslave.netconf.__all__``; every other module and name is internal and may
change in any release (see docs/api.md for the stability policy).  The
pipeline, in the order a tool calls it:

- describe a machine: `MachineSpec`;
- build its system: `build_root` gives a `Root` (toplevel and closure);
- plan its network: `nixslave.netconf.load_topology` or
  `nixslave.netconf.topology_from_data`, then `nixslave.netconf.plan`;
- materialize it: `build_image` gives an `Artifact` (qcow2, raw, vdi, vmdk,
  ova, libvirt, nspawn, tar or oci);
- work on images that exist: `inspect_image`, `upgrade_image`,
  `repair_image`, `install_root`, `image_health`;
- boot artifacts and collect what they did: `run_artifacts` gives one
  `GuestResult` per guest.

Long operations report through one callback type, `Progress`; nothing here
prints.  Every error raised on purpose is a `NixslaveError` (netconf's are
`nixslave.netconf.NetconfError`): both carry ``where``, ``what`` and ``hint``.

Importing ``nixslave`` is cheap: each name is imported on first use, so a
tool that only needs `MachineSpec` never loads libguestfs, networkx or qemu
code.

Example:

    >>> from pathlib import Path
    >>> import nixslave
    >>> spec = nixslave.MachineSpec(name="web-1", demo=True)
    >>> art = nixslave.build_image(spec, Path("/srv/vm/web-1.qcow2"))
    >>> [r.ok for r in nixslave.run_artifacts([art])]
    [True]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> (module, attribute in it; None for the module itself).
# Resolved on first access by __getattr__, so `import nixslave` and
# `nixslave --help` stay fast.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # describe a machine
    "MachineSpec": ("nixslave.spec", "MachineSpec"),
    # build its system
    "Root": ("nixslave.root", "Root"),
    "NodeNetwork": ("nixslave.root", "NodeNetwork"),
    "build_root": ("nixslave.root", "build"),
    "node_network": ("nixslave.topology", "node_network"),
    # materialize it
    "Artifact": ("nixslave.backends", "Artifact"),
    "DiskOptions": ("nixslave.backends.disk", "DiskOptions"),
    "build_image": ("nixslave.build", "build_image"),
    # existing images
    "ImageReport": ("nixslave.image.inspect", "ImageReport"),
    "inspect_image": ("nixslave.image.inspect", "inspect_image"),
    "inspect_images": ("nixslave.image.inspect", "inspect_images"),
    "UpgradeReport": ("nixslave.image.upgrade", "UpgradeReport"),
    "upgrade_image": ("nixslave.image.upgrade", "upgrade"),
    "Finding": ("nixslave.image.repair", "Finding"),
    "RepairReport": ("nixslave.image.repair", "RepairReport"),
    "repair_image": ("nixslave.image.repair", "repair"),
    "Health": ("nixslave.image.repair", "Health"),
    "image_health": ("nixslave.image.repair", "health"),
    "InstallReport": ("nixslave.image.install", "InstallReport"),
    "install_root": ("nixslave.image.install", "install"),
    # networks: topology -> plan (its own public namespace)
    "netconf": ("nixslave.netconf", None),
    # run artifacts
    "GuestResult": ("nixslave.runtime.launch", "GuestResult"),
    "run_artifacts": ("nixslave.runtime.launch", "run_artifacts"),
    # fleet (up/status/exec/switch/down): its names join here, from
    # nixslave.runtime.fleet, once that module exists and imports cleanly.
    # progress reporting
    "Progress": ("nixslave.progress", "Progress"),
    # the error family
    "NixslaveError": ("nixslave.errors", "NixslaveError"),
    "SpecError": ("nixslave.errors", "SpecError"),
    "NixError": ("nixslave.errors", "NixError"),
    "RootError": ("nixslave.errors", "RootError"),
    "BuildError": ("nixslave.errors", "BuildError"),
    "ImageError": ("nixslave.errors", "ImageError"),
    "RunError": ("nixslave.errors", "RunError"),
    "ToolError": ("nixslave.errors", "ToolError"),
}

__all__ = [
    "Artifact",
    "BuildError",
    "DiskOptions",
    "Finding",
    "GuestResult",
    "Health",
    "ImageError",
    "ImageReport",
    "InstallReport",
    "MachineSpec",
    "NixError",
    "NixslaveError",
    "NodeNetwork",
    "Progress",
    "RepairReport",
    "Root",
    "RootError",
    "RunError",
    "SpecError",
    "ToolError",
    "UpgradeReport",
    "build_image",
    "build_root",
    "image_health",
    "inspect_image",
    "inspect_images",
    "install_root",
    "netconf",
    "node_network",
    "repair_image",
    "run_artifacts",
    "upgrade_image",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__
    from nixslave import netconf
    from nixslave.backends import Artifact
    from nixslave.backends.disk import DiskOptions
    from nixslave.build import build_image
    from nixslave.errors import (
        BuildError,
        ImageError,
        NixError,
        NixslaveError,
        RootError,
        RunError,
        SpecError,
        ToolError,
    )
    from nixslave.image.inspect import ImageReport, inspect_image, inspect_images
    from nixslave.image.install import InstallReport
    from nixslave.image.install import install as install_root
    from nixslave.image.repair import Finding, Health, RepairReport
    from nixslave.image.repair import health as image_health
    from nixslave.image.repair import repair as repair_image
    from nixslave.image.upgrade import UpgradeReport
    from nixslave.image.upgrade import upgrade as upgrade_image
    from nixslave.progress import Progress
    from nixslave.root import NodeNetwork, Root
    from nixslave.root import build as build_root
    from nixslave.runtime.launch import GuestResult, run_artifacts
    from nixslave.spec import MachineSpec
    from nixslave.topology import node_network


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and remember the name."""
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'nixslave' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (for completion and ``help()``), not the helpers above."""
    return [*sorted(__all__), "__version__"]
