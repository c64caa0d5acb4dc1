"""`nixslave image build|inspect`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image, check_format
from nixslave.cli._common import emit_json, err_console, progress_printer, spec_data
from nixslave.cli.root import CONFIG, DEMO, FLAKE, JSON, NIXPKGS, TOPLEVEL, WITH_NIX
from nixslave.errors import BuildError
from nixslave.spec import MachineSpec, valid_size

app = typer.Typer(no_args_is_help=True)


class Format(str, Enum):  # noqa: UP042 - typer needs a str Enum
    qcow2 = "qcow2"
    raw = "raw"
    vdi = "vdi"
    vmdk = "vmdk"
    ova = "ova"
    libvirt = "libvirt"
    nspawn = "nspawn"
    tar = "tar"
    oci = "oci"


class Layout(str, Enum):  # noqa: UP042
    disk = "disk"
    store_disk = "store-disk"
    shared = "shared"


class Boot(str, Enum):  # noqa: UP042
    direct = "direct"
    bios = "bios"
    uefi = "uefi"


class ShareKind(str, Enum):  # noqa: UP042
    ninep = "9p"
    virtiofs = "virtiofs"


class StoreFs(str, Enum):  # noqa: UP042
    ext4 = "ext4"
    erofs = "erofs"
    squashfs = "squashfs"


class Compress(str, Enum):  # noqa: UP042
    zstd = "zstd"
    zlib = "zlib"


@app.command("build")
def build(
    out: str = typer.Option(..., "-o", "--output", help="Image file to write."),
    name: str = typer.Option(None, "--name", "-n", help="Machine name (default: the node, "
                             "else demo)."),
    demo: bool = DEMO, config: Path = CONFIG, nixpkgs: Path = NIXPKGS,
    toplevel: str = TOPLEVEL, flake: str = FLAKE, with_nix: bool = WITH_NIX,
    fmt: Format = typer.Option(Format.qcow2, "--format", help="Image format."),
    layout: Layout = typer.Option(Layout.disk, "--layout", help="Where the store lives."),
    boot: Boot = typer.Option(None, "--boot", help="Who loads the kernel (default: direct "
                              "for disks and libvirt, bios for VirtualBox)."),
    share: ShareKind = typer.Option(ShareKind.ninep, "--share", help="Shared store transport."),
    store_fs: StoreFs = typer.Option(None, "--store-fs", help="Store disk file system "
                                     "(default erofs; store-disk layout only)."),
    size: str = typer.Option(None, "--size", help="Disk size (e.g. 2G); automatic if unset."),
    memory: int = typer.Option(512, "--memory", help="Guest memory in MiB."),
    cpus: int = typer.Option(1, "--cpus"),
    halt: bool = typer.Option(None, "--halt/--no-halt", help="Demo system: power off after "
                              "boot (default: halt unless --topology)."),
    topology: Path = typer.Option(None, "--topology", help="Topology file (YAML/JSON/TOML)."),
    node: str = typer.Option(None, "--node", help="This machine's node in the topology."),
    cluster_size: str = typer.Option(None, "--cluster-size", help="qcow2 cluster size."),
    preallocation: str = typer.Option("off", "--preallocation", help="off or metadata."),
    compress: Compress = typer.Option(None, "--compress", help="qcow2 compression."),
    overlay: Path = typer.Option(None, "--overlay", help="Also create a per-instance overlay."),
    checksum: bool = typer.Option(False, "--checksum", help="Record the image's sha256."),
    json_out: bool = JSON,
) -> None:
    """Materialize a machine as a disk, VirtualBox, container or libvirt artifact, no VM."""
    if node is not None and topology is None:
        raise typer.BadParameter("--node needs --topology")
    if not out or out.endswith("/"):
        # checked on the text: a Path would drop the trailing slash
        raise BuildError("-o names a directory", where=out or "-o",
                         hint="give a file name such as machine.qcow2")
    if preallocation not in ("off", "metadata"):
        raise typer.BadParameter("--preallocation must be off or metadata")
    boot_mode = check_format(fmt.value, boot.value if boot else None, layout.value)
    spec = MachineSpec.parse(spec_data(
        name=name if name is not None else (node or "demo"), demo=demo, config=config,
        nixpkgs=nixpkgs, toplevel=toplevel, flake=flake, with_nix=with_nix, boot=boot_mode,
        layout=layout.value, share=share.value, size=size, memory=memory, cpus=cpus,
        store_fs=store_fs.value if store_fs else None,
        halt=(topology is None) if halt is None else halt))
    options = DiskOptions(
        format=fmt.value,
        cluster_size=valid_size(cluster_size, "--cluster-size") if cluster_size else None,
        preallocation=preallocation,  # type: ignore[arg-type]
        compression=compress.value if compress else None,  # type: ignore[arg-type, unused-ignore]
        overlay=overlay, checksum=checksum)
    artifact = build_image(spec, Path(out), options, topology=topology, node=node,
                           progress=progress_printer(json_out))
    if json_out:
        emit_json(artifact.to_json())
    else:
        print(artifact.extra.get("published_as", artifact.image))


@app.command("inspect")
def inspect(images: list[Path] = typer.Argument(..., help="Images to inspect."),
            store_image: Path = typer.Option(None, "--store-image",
                                             help="The store disk of a store-disk image "
                                                  "(default: the one its build made)."),
            health: bool = typer.Option(False, "--health", help="Also check the file system, "
                                        "the store's NAR hashes and the boot configuration "
                                        "(read-only)."),
            json_out: bool = JSON) -> None:
    """Recognise NixOS or nixslave images offline (libguestfs) and report on them.

    Each image is inspected on its own: one that cannot be read fails only
    its own entry.  Exit 0 when every image is NixOS, 1 when one is not, 2
    when one could not be inspected.
    """
    from nixslave.cli import format_error
    from nixslave.errors import NixslaveError
    from nixslave.image.inspect import inspect_image

    if store_image is not None and len(images) > 1:
        raise typer.BadParameter("--store-image applies to a single image")
    reports: list[dict[str, object]] = []
    for image in images:
        try:
            reports.append(inspect_image(image, store_image=store_image,
                                         health=health).to_json())
        except NixslaveError as exc:
            reports.append({"path": str(image), "error": format_error(exc)})
    if json_out:
        emit_json(reports[0] if len(reports) == 1 else reports)
    else:
        for report in reports:
            if len(reports) > 1:
                print(f"== {safe_text(str(report['path']))}")
            if "error" in report:
                err_console.print(safe_text(str(report["error"])), highlight=False, markup=False)
                continue
            for key, value in report.items():
                if isinstance(value, list) and len(value) > 8:
                    value = f"[{len(value)} entries]"
                print(f"{key:>22}: {safe_text(str(value))}")
    if any("error" in r for r in reports):
        raise typer.Exit(2)
    if not all(r.get("is_nixos") for r in reports):
        raise typer.Exit(1)


def safe_text(text: str) -> str:
    """Control characters from an image (a crafted manifest) shown, never obeyed.

    A terminal would act on escape sequences in a name or a path; ``--json``
    escapes them already.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _source(demo: bool, config: Path | None, nixpkgs: Path | None, toplevel: str | None,
            flake: str | None) -> dict[str, object]:
    """The new system's source; empty means: the image's own spec, built again."""
    source: dict[str, object] = {}
    for key, value in (("demo", demo or None), ("config", config), ("toplevel", toplevel),
                       ("flake", flake), ("nixpkgs", nixpkgs)):
        if value is not None:
            source[key] = str(value) if isinstance(value, Path) else value
    if sum(k in source for k in ("demo", "config", "toplevel", "flake")) > 1:
        raise typer.BadParameter("give at most one of --demo, --config, --toplevel, --flake")
    return source


def _lines(pairs: list[tuple[str, object]]) -> None:
    for key, value in pairs:
        if value not in (None, "", [], 0) or key in ("changed",):
            print(f"{key:>16}: {safe_text(str(value))}")


@app.command("upgrade")
def upgrade(image: Path = typer.Argument(..., help="The stopped image to upgrade."),
            demo: bool = DEMO, config: Path = CONFIG, nixpkgs: Path = NIXPKGS,
            toplevel: str = TOPLEVEL, flake: str = FLAKE,
            gc: bool = typer.Option(False, "--gc", help="Remove store paths the new system "
                                    "does not use."),
            json_out: bool = JSON) -> None:
    """Copy only the missing store paths into a stopped image, then switch it atomically.

    Without a source option the image's own spec is built again (a no-op
    when nothing changed).  A process killed at any moment leaves an image
    that boots the old or the new system.
    """
    from nixslave.image.upgrade import upgrade as do_upgrade

    report = do_upgrade(image, source=_source(demo, config, nixpkgs, toplevel, flake), gc=gc,
                        progress=progress_printer(json_out))
    if json_out:
        emit_json(report.to_json())
        return
    d = report.to_json()
    _lines([(k, d[k]) for k in ("old_toplevel", "new_toplevel", "changed", "paths_added",
                                "bytes_added", "paths_removed", "registered", "store_image",
                                "cmdline", "seconds")])


@app.command("repair")
def repair(image: Path = typer.Argument(..., help="The stopped image to check and repair."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Check and report; the "
                                        "image is opened read-only."),
           no_backup: bool = typer.Option(False, "--no-backup", help="Raw images: no safety "
                                          "copy (qcow2 always gets an internal snapshot)."),
           store_image: Path = typer.Option(None, "--store-image", help="The store disk of "
                                            "a store-disk image (default: its build's)."),
           json_out: bool = JSON) -> None:
    """Check the file system, store (NAR hashes), system link and boot loader, and fix them.

    Exit 0 when the image is (now) healthy, 1 when something could not be
    fixed, or, with --dry-run, when something would be changed.
    """
    from nixslave.image.repair import repair as do_repair

    report = do_repair(image, dry_run=dry_run, backup=not no_backup, store_image=store_image,
                       progress=progress_printer(json_out))
    if json_out:
        emit_json(report.to_json())
    else:
        if report.backup:
            print(f"to go back: {report.backup}")
        for f in report.findings:
            mark = "would fix" if dry_run and f.fixed else ("fixed" if f.fixed else "NOT FIXED")
            print(f"{mark:>9}  {f.check}: {safe_text(f.problem)} -> {safe_text(f.action)}")
        for p in report.missing_on_host:
            print(f"  missing on the host too: {p}")
        print(f"{len(report.findings)} findings; store verified: {report.verified_paths} "
              f"paths, {report.verified_bytes / 2**20:.1f} MiB at {report.verify_mb_per_s} "
              "MiB/s")
    if not report.healthy or (dry_run and not report.clean):
        raise typer.Exit(1)


@app.command("install")
def install(into: Path = typer.Option(..., "--into", help="An existing disk image."),
            partition: int = typer.Option(None, "--partition", min=1, help="Install into "
                                          "this (empty) partition."),
            new_partition: bool = typer.Option(False, "--new-partition", help="Create a "
                                               "partition in the free space at the end."),
            force: bool = typer.Option(False, "--force", help="Overwrite a partition that "
                                       "holds files."),
            name: str = typer.Option("demo", "--name", "-n", help="Machine name."),
            demo: bool = DEMO, config: Path = CONFIG, nixpkgs: Path = NIXPKGS,
            toplevel: str = TOPLEVEL, flake: str = FLAKE, with_nix: bool = WITH_NIX,
            memory: int = typer.Option(512, "--memory", help="Guest memory in MiB."),
            cpus: int = typer.Option(1, "--cpus"),
            json_out: bool = JSON) -> None:
    """Install a slave root into an existing image without touching its other partitions.

    The root boots directly (the host passes kernel and command line);
    a sidecar beside the image lets `nixslave run` boot it.
    """
    from nixslave import root as rootmod
    from nixslave.image.install import install as do_install
    from nixslave.image.target import open_target

    if (partition is None) == (not new_partition):
        raise typer.BadParameter("give exactly one of --partition N and --new-partition")
    open_target(into, write=True)  # a missing, locked or damaged target before a long build
    spec = MachineSpec.parse(spec_data(name=name, demo=demo, config=config, nixpkgs=nixpkgs,
                                       toplevel=toplevel, flake=flake, with_nix=with_nix,
                                       layout="disk", boot="direct", memory=memory,
                                       cpus=cpus))
    say = progress_printer(json_out)
    root = rootmod.build(spec, progress=say)
    report = do_install(into, root, partition=partition, new_partition=new_partition,
                        force=force, progress=say)
    if json_out:
        emit_json(report.to_json())
    else:
        print(f"{report.image}: partition {report.partition}, {report.size / 2**20:.0f} MiB "
              f"at {report.start / 2**20:.0f} MiB; boot it with: nixslave run {report.image}")
