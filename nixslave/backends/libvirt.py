"""libvirt artifacts: the disks plus a domain XML and one network XML per segment.

The public name is the domain XML (``-o alpha.xml``), so ``virsh define
alpha.xml`` is all a user types.  Beside it, in the same build directory:

* ``<name>.qcow2`` (and ``<name>-store.qcow2`` or ``store/`` for the other
  store layouts), made by :class:`~nixslave.backends.disk.DiskBackend`
  inside this build's scratch and moved in, so they are the same bytes as a
  disk artifact of the same spec;
* ``net-<segment>.xml``: one isolated libvirt network per multi-access
  segment of the plan.  No ``<forward>`` (isolated), no ``<ip>`` (the plan
  gives the host no address, so the host gets none and runs no DHCP).  Its
  bridge is the one :func:`~nixslave.netconf.wiring.libvirt_interfaces`
  attaches the domain to; p2p links need no network (udp pairs).

Every path in the domain XML is absolute and points into the build's *final*
directory (``publish.store_dir(out)/<build id>``), computed before
publishing, so the XML is right the moment the rename makes it visible and
never names the scratch directory.  The host owns the boot: direct boot puts
the toplevel's kernel, initrd and command line (the same
:func:`nixslave.boot.cmdline` qemu uses) into ``<os>``; ``bios`` and
``uefi`` boot the disk (``<os firmware='efi'>`` lets libvirt pick OVMF).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from nixslave import boot, gcroots, interrupt, nix
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskBackend, DiskOptions, sha256_file
from nixslave.backends.ext4 import derived_uuid
from nixslave.backends.publish import BuildSet
from nixslave.errors import BuildError
from nixslave.nixos import ROOT_LABEL, STORE_LABEL, STORE_TAG, store_kind
from nixslave.progress import Progress
from nixslave.root import Root

NS = "https://nixslave.invalid/libvirt/1"  # our <metadata> element's namespace


@dataclass(frozen=True)
class LibvirtOptions:
    """How the domain is run and how its disks are made.

    ``virtiofs_readonly``: libvirt accepts ``<readonly/>`` on a virtiofs
    share only from version 11; older ones (Debian 12 has 9.0) refuse to
    define the domain.  Turning it off leaves only the guest's ``ro`` mount
    between a root guest and the shared store, so it is on by default.
    """

    virt_type: Literal["kvm", "qemu"] = "kvm"
    machine: str = "pc"
    disk: DiskOptions = field(default_factory=lambda: DiskOptions(gcroot=False))
    loader: Path | None = None     # uefi: a fixed OVMF code file instead of autoselection
    virtiofs_readonly: bool = True
    gcroot: bool = True
    checksum: bool = False         # record the domain XML's sha256


def _network_file(net_id: str) -> str:
    """A file name for a segment; ids are checked names, but never trust a path."""
    safe = net_id if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", net_id) else None
    return f"net-{safe or derived_uuid('net', net_id)[:8]}.xml"


def network_xml(name: str, bridge: str, mtu: int, uuid: str) -> str:
    """An isolated bridge network: no forward, no addresses, no DHCP."""
    return (f"<network>\n  <name>{escape(name)}</name>\n  <uuid>{uuid}</uuid>\n"
            f"  <bridge name={quoteattr(bridge)} stp='off' delay='0'/>\n"
            f"  <mtu size='{int(mtu)}'/>\n</network>\n")


def plan_networks(extra: dict[str, object] | None) -> tuple[str, dict[str, str]]:
    """The node's ``<interface>`` elements and network XML per segment it joins.

    Only the segments this node is on: each machine's build carries the
    networks its own domain needs, and two machines of a plan write the same
    XML for a shared segment (same name, bridge and UUID).
    """
    if not extra or "topology" not in extra:
        return "", {}
    from nixslave.netconf.wiring import libvirt_interfaces, short_id
    from nixslave.topology import check_node, load_plan

    plan = load_plan(Path(str(extra["topology"])))
    node = str(extra.get("node") or "")
    check_node(plan, node)
    nets: dict[str, str] = {}
    for i in plan.node(node).interfaces:
        net = plan.networks[i.link_id]
        if net.kind == "p2p":
            continue
        name = f"nxs-{plan.name}-{i.link_id}"
        # The same bridge name wiring.libvirt_interfaces attaches the domain to.
        bridge = "nb" + short_id(plan.name, i.link_id, n=12)
        nets[_network_file(i.link_id)] = network_xml(
            name, bridge, net.mtu, derived_uuid("libvirt-network", plan.name, i.link_id))
    return _definable(libvirt_interfaces(plan, node)), nets


def _definable(interfaces: str) -> str:
    """Drop ``<mtu>`` from udp interfaces, which libvirt refuses to define.

    libvirt's schema allows it, but its qemu driver (9.0) says "setting MTU
    on interface type udp is not supported yet".  The guest sets the
    planned MTU itself; a udp socket has no host-side MTU to match.
    """
    out, kind = [], ""
    for line in interfaces.splitlines():
        m = re.match(r"\s*<interface type=['\"](\w+)['\"]", line)
        if m:
            kind = m.group(1)
        if kind == "udp" and re.match(r"\s*<mtu\b", line):
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def domain_xml(root: Root, build_dir: Path, disk: str, disk_format: str, *,
               store_disk: str | None, share: str | None, interfaces: str,
               opts: LibvirtOptions, build: str) -> str:
    """The domain: host-owned boot, labelled disks, read-only store share, NICs."""
    spec = root.spec
    kind = store_kind(spec)
    q = quoteattr
    lines = [f"<domain type={q(opts.virt_type)}>",
             f"  <name>{escape(spec.name)}</name>",
             f"  <uuid>{derived_uuid(root.toplevel, spec.name, 'libvirt-domain')}</uuid>",
             "  <metadata>",
             f"    <nixslave:machine xmlns:nixslave={q(NS)} toplevel={q(root.toplevel)} "
             f"build={q(build)} layout={q(spec.layout)} boot={q(spec.boot)}/>",
             "  </metadata>",
             f"  <memory unit='MiB'>{spec.memory}</memory>",
             f"  <vcpu>{spec.cpus}</vcpu>"]
    if kind == "virtiofs":
        # vhost-user needs the guest's RAM shared with virtiofsd.
        lines += ["  <memoryBacking>", "    <source type='memfd'/>",
                  "    <access mode='shared'/>", "  </memoryBacking>"]
    firmware = " firmware='efi'" if spec.boot == "uefi" and opts.loader is None else ""
    lines += [f"  <os{firmware}>",
              f"    <type arch='x86_64' machine={q(opts.machine)}>hvm</type>"]
    if spec.boot == "direct":
        top = Path(root.toplevel)
        kernel = os.path.realpath(top / "kernel")
        initrd = os.path.realpath(top / "initrd")
        lines += [f"    <kernel>{escape(kernel)}</kernel>",
                  f"    <initrd>{escape(initrd)}</initrd>",
                  f"    <cmdline>{escape(boot.cmdline(root.toplevel, spec))}</cmdline>"]
    else:
        if spec.boot == "uefi" and opts.loader is not None:
            lines.append(f"    <loader readonly='yes' type='pflash'>{escape(str(opts.loader))}"
                         "</loader>")
            lines.append(f"    <nvram>{escape(str(build_dir / (spec.name + '_VARS.fd')))}"
                         "</nvram>")
        lines.append("    <boot dev='hd'/>")
    lines += ["  </os>", "  <features>", "    <acpi/>", "    <apic/>", "  </features>",
              "  <on_poweroff>destroy</on_poweroff>", "  <on_reboot>restart</on_reboot>",
              "  <on_crash>destroy</on_crash>", "  <devices>"]
    lines += _disk(build_dir / disk, disk_format, "vda", ROOT_LABEL, readonly=False)
    if store_disk is not None:
        lines += _disk(build_dir / store_disk, disk_format, "vdb", STORE_LABEL, readonly=True)
    if share is not None:
        source = q(str(build_dir / share))
        if kind == "9p":
            # passthrough: the guest sees the store's own owners and modes.
            lines += ["    <filesystem type='mount' accessmode='passthrough'>",
                      f"      <source dir={source}/>", f"      <target dir={q(STORE_TAG)}/>",
                      "      <readonly/>", "    </filesystem>"]
        else:
            lines += ["    <filesystem type='mount' accessmode='passthrough'>",
                      "      <driver type='virtiofs'/>",
                      f"      <source dir={source}/>", f"      <target dir={q(STORE_TAG)}/>"]
            if opts.virtiofs_readonly:
                lines.append("      <readonly/>")
            lines.append("    </filesystem>")
    for ln in interfaces.splitlines():
        lines.append("    " + ln)
    lines += ["    <serial type='pty'>", "      <target port='0'/>", "    </serial>",
              "    <console type='pty'>", "      <target type='serial' port='0'/>",
              "    </console>", "  </devices>", "</domain>"]
    return "\n".join(lines) + "\n"


def _disk(path: Path, fmt: str, dev: str, serial: str, *, readonly: bool) -> list[str]:
    """A virtio disk; the serial is the label, as run.py gives qemu."""
    out = ["    <disk type='file' device='disk'>",
           f"      <driver name='qemu' type={quoteattr(fmt)}/>",
           f"      <source file={quoteattr(str(path))}/>",
           f"      <target dev='{dev}' bus='virtio'/>"]
    if readonly:
        out.append("      <readonly/>")
    out += [f"      <serial>{escape(serial)}</serial>", "    </disk>"]
    return out


class LibvirtBackend:
    """Disks plus domain and network XML that ``virsh define`` takes as they are."""

    name = "libvirt"

    def materialize(self, root: Root, out: Path, options: LibvirtOptions | None = None, *,
                    progress: Progress | None = None,
                    extra: dict[str, object] | None = None) -> Artifact:
        """Build the libvirt artifact of ``root`` with its domain XML at ``out``."""
        opts = options or LibvirtOptions()
        say: Progress = progress or (lambda _m: None)
        out = Path(out).absolute()
        self._check(root, out, opts)
        interfaces, networks = plan_networks(extra)  # a bad node fails before any work
        try:
            bs = BuildSet(out)
            bs.__enter__()
        except OSError as exc:
            raise BuildError(f"cannot write beside the output: {exc.strerror}",
                             where=str(out), hint="pick a writable directory") from None
        try:
            artifact = self._build(root, bs, opts, interfaces, networks, say, extra)
            say("publishing the artifact")
            final = bs.publish()
        finally:
            bs.__exit__(None, None, None)
        artifact = Artifact.load(final / out.name)
        if opts.gcroot:
            # direct boot reads the kernel from the host store at every start
            nix.add_gcroot(f"{root.spec.name}-current", root.toplevel)
            gcroots.record_image(root.spec.name, out, root.toplevel)
        say(f"wrote {out}")
        return artifact

    def _check(self, root: Root, out: Path, opts: LibvirtOptions) -> None:
        if out.suffix != ".xml" or out.name.startswith("net-"):
            raise BuildError("a libvirt artifact is named by its domain XML", where=str(out),
                             hint=f"give a name such as {root.spec.name}.xml")
        if out.is_dir():
            raise BuildError("the output is a directory", where=str(out),
                             hint=f"give a file name such as {root.spec.name}.xml")
        if not out.parent.is_dir():
            raise BuildError("the output directory does not exist", where=str(out.parent),
                             hint="create it first")
        if opts.disk.overlay is not None:
            raise BuildError("overlays are per instance, a libvirt artifact is a definition",
                             where="disk options", hint="drop --overlay")
        if opts.loader is not None and root.spec.boot != "uefi":
            raise BuildError("a UEFI loader needs --boot uefi", where="libvirt options",
                             hint="drop the loader or use --boot uefi")

    def _build(self, root: Root, bs: BuildSet, opts: LibvirtOptions, interfaces: str,
               networks: dict[str, str], say: Progress,
               extra: dict[str, object] | None) -> Artifact:
        spec = root.spec
        fmt = opts.disk.format

        def nested(msg: str) -> None:
            if not msg.startswith(("publishing the artifact", "wrote ", "writing ")):
                say(msg)

        disk_name = f"{spec.name}.{fmt}"
        # libvirt starts qemu itself, outside any namespace of ours: its
        # <filesystem> needs a real tree, not the zero-copy view.
        inner = DiskBackend().materialize(root, bs.work / disk_name,
                                          replace(opts.disk, gcroot=False, checksum=False,
                                                  share_method="tree"),
                                          progress=nested)
        # Move the nested build's files into ours (same file system: renames).
        os.replace(inner.image, bs.dir / disk_name)
        store_disk = share = None
        if inner.store_image is not None:
            store_disk = inner.store_image.name
            os.replace(inner.store_image, bs.dir / store_disk)
        if inner.share_dir is not None:
            share = inner.share_dir.name
            os.replace(inner.share_dir, bs.dir / share)
        interrupt.check()
        final_dir = bs.base / bs.id  # where publish() will rename bs.dir to
        say("writing the domain and network XML")
        bs.image.write_text(domain_xml(root, final_dir, disk_name, fmt, store_disk=store_disk,
                                       share=share, interfaces=interfaces, opts=opts,
                                       build=bs.id))
        for fname, text in sorted(networks.items()):
            (bs.dir / fname).write_text(text)
        artifact = Artifact(
            name=spec.name, kind="libvirt", format="libvirt", image=bs.image,
            toplevel=root.toplevel, layout=spec.layout, store=store_kind(spec), boot=spec.boot,
            cmdline=boot.cmdline(root.toplevel, spec),
            store_image=bs.dir / store_disk if store_disk else None,
            share_dir=bs.dir / share if share else None, memory=spec.memory, cpus=spec.cpus,
            sha256=sha256_file(bs.image) if opts.checksum else "",
            virtual_size=inner.virtual_size, build=bs.id,
            extra={"closurePaths": len(root.paths), "narSize": root.nar_size,
                   "demo": spec.demo, "disk": disk_name, "diskFormat": fmt,
                   "networks": sorted(networks), "domain": spec.name,
                   **{k: v for k, v in inner.extra.items() if k in ("kernel", "initrd")},
                   **(extra or {})},
        )
        artifact.save()
        return artifact
