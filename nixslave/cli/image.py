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
        halt=(topology is None) if halt is None else halt))
    options = DiskOptions(
        format=fmt.value,
        cluster_size=valid_size(cluster_size, "--cluster-size") if cluster_size else None,
        preallocation=preallocation,  # type: ignore[arg-type]
        compression=compress.value if compress else None,  # type: ignore[arg-type]
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
            reports.append(inspect_image(image, store_image=store_image).to_json())
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
