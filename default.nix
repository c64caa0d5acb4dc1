# nixslave as a nixpkgs package:  nix-build  (or import it with your own pkgs).
#
# Written against the nixpkgs sources but never built here: the development
# machines have no nixpkgs (see docs/nix.md).  Every attribute below was
# looked up in nixpkgs; the file that defines it is named beside it.
{
  pkgs ? import <nixpkgs> { },
}:

let
  inherit (pkgs) lib;
  # python3Packages: pkgs/top-level/python-packages.nix; buildPythonApplication's
  # arguments (pyproject, build-system, dependencies, makeWrapperArgs,
  # pythonImportsCheck): pkgs/development/interpreters/python/mk-python-derivation.nix
  py = pkgs.python3Packages;
  pyproject = lib.importTOML ./pyproject.toml; # lib/default.nix (lib.importTOML)

  # The tools nixslave runs, as scripts/setup.sh installs them on Debian.
  tools = with pkgs; [
    qemu # qemu-system-x86_64, qemu-img: pkgs/applications/virtualization/qemu/default.nix
    libguestfs-with-appliance # guestfish, the appliance: pkgs/by-name/li/libguestfs/package.nix
    e2fsprogs # mkfs.ext4, debugfs, tune2fs, e2fsck: pkgs/by-name/e2/e2fsprogs/package.nix
    util-linux # sfdisk, blkid: pkgs/by-name/ut/util-linux/package.nix
    gptfdisk # sgdisk (GPT checks): pkgs/by-name/gp/gptfdisk/package.nix
    dosfstools # mkfs.vfat (the UEFI ESP): pkgs/by-name/do/dosfstools/package.nix
    mtools # mcopy, mmd (the UEFI ESP): pkgs/by-name/mt/mtools/package.nix
    syslinux # extlinux (bios boot): pkgs/by-name/sy/syslinux/package.nix
    binutils # objcopy, objdump (unified kernel images): pkgs/development/tools/misc/binutils/default.nix
    erofs-utils # mkfs.erofs (store disks): pkgs/by-name/er/erofs-utils/package.nix
    squashfsTools # mksquashfs (store disks): pkgs/by-name/sq/squashfsTools/package.nix
    vde2 # vde_switch (LAN segments): pkgs/by-name/vd/vde2/package.nix
    iproute2 # ip (network namespaces): pkgs/by-name/ip/iproute2/package.nix
    systemd # systemd-nspawn: pkgs/os-specific/linux/systemd/default.nix
    libvirt # virsh: pkgs/by-name/li/libvirt/package.nix
    virtiofsd # the virtiofs share: pkgs/by-name/vi/virtiofsd/package.nix
    nix # nix-build, nix-store, nix-instantiate: pkgs/tools/package-management/nix/default.nix
    zstd # pkgs/tools/compression/zstd/default.nix
    cpio # pkgs/by-name/cp/cpio/package.nix
    graphviz # dot, for `nixslave net graph`: pkgs/by-name/gr/graphviz/package.nix
    gnutar # pkgs/tools/archivers/gnutar/default.nix
    gzip # pkgs/tools/compression/gzip/default.nix
    coreutils # pkgs/tools/misc/coreutils/default.nix
  ];
in
py.buildPythonApplication {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the wheel is built from: no .venv, tests or benchmarks.
  # lib.fileset: lib/fileset/default.nix (toSource, unions)
  src = lib.fileset.toSource {
    root = ./.;
    fileset = lib.fileset.unions [
      ./pyproject.toml
      ./README.md
      ./nixslave
    ];
  };

  # Four files nixslave reads from Debian's paths, pointed at their nixpkgs
  # outputs.  substituteInPlace --replace-fail (pkgs/stdenv/generic/setup.sh)
  # fails the build when a path is no longer in the source, rather than
  # leaving a Debian path behind.
  #   mbr.bin: syslinux installs to share/syslinux (DATADIR in
  #     pkgs/by-name/sy/syslinux/package.nix)
  #   the UKI stub: systemd's lib/systemd/boot/efi (systemd-boot's stub)
  #   OVMF_CODE.fd/OVMF_VARS.fd: OVMF's fd output, FV/ (postInstall in
  #     pkgs/applications/virtualization/OVMF/default.nix)
  #   virtiofsd: pkgs/by-name/vi/virtiofsd/package.nix
  postPatch = ''
    substituteInPlace nixslave/backends/bootloader.py nixslave/image/repairs.py \
      --replace-fail /usr/lib/EXTLINUX/mbr.bin ${pkgs.syslinux}/share/syslinux/mbr.bin
    substituteInPlace nixslave/backends/uefi.py \
      --replace-fail /usr/lib/systemd/boot/efi/linuxx64.efi.stub \
                     ${pkgs.systemd}/lib/systemd/boot/efi/linuxx64.efi.stub
    substituteInPlace nixslave/runtime/run.py \
      --replace-fail /usr/lib/qemu/virtiofsd ${pkgs.virtiofsd}/bin/virtiofsd \
      --replace-fail /usr/share/OVMF ${pkgs.OVMF.fd}/FV
  '';

  # [build-system] requires = ["setuptools>=61"]
  build-system = [ py.setuptools ];
  # [project] dependencies
  dependencies = with py; [
    typer
    rich
    pydantic
    networkx
    pyyaml
  ];

  # The guestfs Python module: libguestfs installs its own bindings into its
  # output (configureFlags --with-python-installdir, in
  # pkgs/by-name/li/libguestfs/package.nix), built for the same python3, and
  # that build carries the appliance.  python3Packages.guestfs
  # (pkgs/development/python-modules/guestfs/default.nix) is disabled on
  # Python >= 3.13 and links a libguestfs without the appliance.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath tools)
    "--prefix"
    "PYTHONPATH"
    ":"
    "${pkgs.libguestfs-with-appliance}/${py.python.sitePackages}"
  ];

  # The test suite boots guests and launches appliances; it runs in CI on a
  # machine with KVM or TCG (scripts/test.sh), not in the Nix sandbox.
  doCheck = false;
  pythonImportsCheck = [
    "nixslave"
    "nixslave.cli"
  ];

  meta = {
    inherit (pyproject.project) description;
    license = lib.licenses.mit;
    mainProgram = "nixslave";
    platforms = [ "x86_64-linux" ]; # guests run under qemu-system-x86_64
  };
}
