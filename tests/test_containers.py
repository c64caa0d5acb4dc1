"""Container artifacts: nspawn directories, tarballs and OCI layouts, run for real.

Every artifact is built from the session's demo root (or a topology node's),
checked with the tools that consume it (systemd-nspawn, GNU tar, skopeo,
umoci, podman) and with readers independent of nixslave's writers (Python's
tarfile, nix-hash), never with mocks.  Each test's docstring names the bug
it catches.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from nixmerge import Conflict, eval_modules, merge

from nixslave import nix
from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.backends.nspawn import NspawnBackend, NspawnOptions
from nixslave.backends.oci import OciBackend, OciOptions, layer_groups
from nixslave.backends.tar import TarBackend, TarOptions
from nixslave.nixos import container_module
from nixslave.root import Root
from nixslave.runtime.container import PINGS_DONE, Container, fleet, join_bridge, pings
from nixslave.spec import MachineSpec
from nixslave.topology import load_plan, node_network

pytestmark = pytest.mark.nix

DATA = Path(__file__).parent / "data" / "containers"
TOPOLOGY = DATA / "pair.yml"
# Every address of pair.yml's nodes, pinned from `nixslave net plan` (addresses
# are allocated by stable keys and never move).
ALPHA = {"192.0.2.158", "2001:db8:10:0:be1c:50e3:b857:849e",      # eth0, link to beta
         "198.51.100.1", "2001:db8:20:6208::bee9"}                # eth1, segment lan
BETA = {"192.0.2.159", "2001:db8:10:0:be1c:50e3:b857:849f",
        "198.51.100.83", "2001:db8:20:6208::53b3"}
NO_GCROOT = NspawnOptions(gcroot=False)


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(tree: Path) -> list[tuple[object, ...]]:
    """Everything a consumer of the tree can see: names, types, modes, owners, times,
    contents and link targets."""
    out: list[tuple[object, ...]] = []
    for p in sorted([tree, *tree.rglob("*")]):
        st = os.lstat(p)
        if p.is_symlink():
            body = os.readlink(p)
        elif p.is_file():
            body = _sha(p)
        else:
            body = ""
        out.append((str(p.relative_to(tree)), st.st_mode, st.st_uid, st.st_gid,
                    st.st_mtime_ns, body))
    return out


def _node_build(backend: object, name: str, out: Path, options: object = None, *,
                topology: Path = TOPOLOGY, halt: bool = True) -> Artifact:
    """What build.build_image does for a topology node, with a container backend."""
    plan = load_plan(topology)
    net = node_network(plan, name)
    r = rootmod.build(MachineSpec.parse({"name": name, "demo": True, "halt": halt}),
                      network=net)
    extra = {"topology": str(topology.resolve()), "node": name, "peers": list(net.peers)}
    return backend.materialize(r, out, options, extra=extra)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def nspawn_art(demo_root: Root, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return NspawnBackend().materialize(demo_root, tmp_path_factory.mktemp("ns") / "demo",
                                       NO_GCROOT)


@pytest.fixture(scope="module")
def oci_art(demo_root: Root, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    out = tmp_path_factory.mktemp("oci") / "demo.oci"
    OciBackend().materialize(demo_root, out, OciOptions(gcroot=False))
    return Artifact.load(out)  # extra["published_as"]: the public name


# -- nspawn ---------------------------------------------------------------------

@pytest.mark.nspawn
def test_nspawn_container_boots_its_exact_toplevel(nspawn_art: Artifact, demo_root: Root,
                                                   tmp_path: Path) -> None:
    """Bug: a machine directory nspawn refuses (no /usr: "doesn't look like an OS
    tree") or a ``.nspawn`` whose ``Parameters=`` runs something other than this
    build's init (a stale toplevel, the profile link of another system).  The runner
    passes no program, so only the settings file can make the marker appear."""
    c = Container(nspawn_art, tmp_path / "run")
    assert not any("/init" in a for a in c.argv()), c.argv()
    with c:
        assert c.wait_boot(timeout=60) == demo_root.toplevel
        assert c.wait_exit(timeout=60) == 0  # the demo powers the container off
    lines = c.output().splitlines()
    assert f"NIXSLAVE-BOOT-OK {demo_root.toplevel}" in [ln.strip() for ln in lines]
    settings = nspawn_art.image.with_name("demo.nspawn").read_text()
    assert f"Parameters={demo_root.toplevel}/init\n" in settings
    assert "Boot=no\n" in settings
    # --volatile=overlay: the run left the artifact as it was built
    assert not (nspawn_art.image / "etc/static").is_symlink()


@pytest.mark.nspawn
def test_container_writes_never_reach_the_host_store(demo_root: Root, tmp_path: Path) -> None:
    """Bug: the container's store hardlinked from the host store (Root.prepare's
    default for disks), so root in the container rewrites host store files through
    the shared inodes.  A throw-away store path is added to the closure and written
    to from inside the container; the host's copy must not change."""
    probe_src = tmp_path / "nixslave-container-probe"
    probe_src.write_text(f"probe {os.getpid()} {tmp_path}\n")
    probe = nix.run_nix(["nix-store", "--add", str(probe_src)]).strip()
    try:
        before = (Path(probe).read_bytes(), os.lstat(probe).st_mode)
        r = Root(spec=demo_root.spec, toplevel=demo_root.toplevel,
                 closure=[*demo_root.closure, *nix.path_info([probe])])
        a = NspawnBackend().materialize(r, tmp_path / "probe", NO_GCROOT)
        store = a.image / "nix/store"
        host = {(s.st_dev, s.st_ino) for p in r.paths
                for s in (os.lstat(f) for f in [Path(p), *Path(p).rglob("*")])}
        mine = {(s.st_dev, s.st_ino) for s in (os.lstat(f) for f in store.rglob("*"))}
        assert not host & mine, "the container's store shares inodes with the host store"
        busybox = next(p for p in r.paths if p.endswith("-busybox"))
        sh = f"{busybox}/bin/sh"
        script = f"chmod 0644 {probe}; echo written-inside >> {probe}; cat {probe}"
        with Container(a, tmp_path / "run", volatile=False,
                       extra_args=[sh, "-c", script]) as c:
            c.wait_for("written-inside", timeout=60)
        assert (store / Path(probe).name).read_text().endswith("written-inside\n")
        assert (Path(probe).read_bytes(), os.lstat(probe).st_mode) == before
    finally:
        subprocess.run(["nix-store", "--delete", probe], capture_output=True)


@pytest.mark.nspawn
@pytest.mark.netns
def test_two_containers_ping_each_other_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    """Bug: a ``.nspawn`` [Network] section that leaves out a planned interface, names
    the container side other than the plan (the demo's script then cannot find it and
    prints NIXSLAVE-NETWORK-FAILED), or host ends that never join their link's bridge:
    some ping fails.  Each container must reach every address of the other, on the
    p2p link and on the LAN, IPv4 and IPv6."""
    arts = [_node_build(NspawnBackend(), n, tmp_path / n, NO_GCROOT) for n in ("alpha", "beta")]
    for a in arts:
        settings = a.image.with_name(f"{a.name}.nspawn").read_text()
        assert settings.count("VirtualEthernetExtra=") == 2
    with fleet(arts, tmp_path / "run") as cs:
        for c in cs.values():
            c.wait_boot(timeout=60)
            c.wait_for(PINGS_DONE, timeout=200)
        results = {name: (c.output(), pings(c.output())) for name, c in cs.items()}
    for name, peers in (("alpha", BETA), ("beta", ALPHA)):
        out, got = results[name]
        assert "NIXSLAVE-NETWORK-FAILED" not in out, out
        assert set(got) == peers, out
        assert all(got.values()), got
    # the switch namespace is gone with the fleet
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "nxs-" not in " ".join(ln for ln in ns.splitlines()
                                  if str(tmp_path) in ln), ns


@pytest.mark.boot
@pytest.mark.nspawn
@pytest.mark.netns
def test_a_vm_and_a_container_on_one_segment_ping_each_other(tmp_path: Path) -> None:
    """Bug: VM and container wired from one plan that still disagree: the VM's NIC
    without the planned MAC (its script renames by MAC), the tap on another bridge
    than the container's segment, or a container whose [Network] names another
    segment.  A qemu VM (tap) and an nspawn container (veth) on mixed.yml's one
    segment must reach every address of each other."""
    from nixslave.build import build_image
    from nixslave.netconf.wiring import short_id
    from nixslave.runtime.run import VM, vm_config

    topo = DATA / "mixed.yml"
    plan = load_plan(topo)
    vm_art = build_image(MachineSpec.parse({"name": "vm1", "demo": True}), tmp_path / "vm1.qcow2",
                         DiskOptions(gcroot=False), topology=topo, node="vm1")
    # the container stays up after its own pings: the VM boots later and pings it then
    ct_art = _node_build(NspawnBackend(), "ct1", tmp_path / "ct1", NO_GCROOT, topology=topo,
                         halt=False)
    (bridge,) = ct_art.extra["nspawnBridges"]
    nic = plan.node("vm1").interfaces[0]
    tap = f"nxt{short_id(str(tmp_path), n=10)}"
    ns = f"nxs-{short_id(str(tmp_path), 'mixed', n=10)}"
    cfg = vm_config(vm_art, net_args=[
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={nic.mac}"])
    # The VM (slow under TCG) boots first and keeps pinging for 90 s; the
    # container (up in a second) starts then, so neither pings into the void
    # however loaded the machine is.
    with VM(cfg, tmp_path / "vm") as vm:
        vm.wait_boot(vm_art.toplevel, timeout=600)
        with fleet([ct_art], tmp_path / "run", namespace=ns) as cs:
            join_bridge(ns, tap, bridge)
            vm.wait_for(PINGS_DONE, timeout=300)
            cs["ct1"].wait_for(PINGS_DONE, timeout=300)
            results = {"vm1": pings(vm.output()), "ct1": pings(cs["ct1"].output())}
    addrs = {n: {str(a).split("/")[0] for i in plan.node(n).interfaces for a in i.addresses}
             for n in ("vm1", "ct1")}
    assert set(results["vm1"]) == addrs["ct1"] and all(results["vm1"].values()), results
    assert set(results["ct1"]) == addrs["vm1"] and all(results["ct1"].values()), results
    assert subprocess.run(["ip", "link", "show", "dev", tap], capture_output=True).returncode


@pytest.mark.nspawn
def test_a_killed_runner_takes_its_container_with_it(tmp_path: Path) -> None:
    """Bug: killing nspawn (or the Python process running it) outright leaves the
    container's PID 1 running: nspawn does not take its container down when it is
    SIGKILLed.  The runner must leave no process of the container behind."""
    spec = MachineSpec.parse({"name": "stay", "demo": True, "halt": False})
    r = rootmod.build(spec)
    NspawnBackend().materialize(r, tmp_path / "stay", NO_GCROOT)

    def inits() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"{r.toplevel}/init"], capture_output=True,
                              text=True).stdout.split()

    code = ("import sys, time; from pathlib import Path; from nixslave.backends import "
            "Artifact; from nixslave.runtime.container import Container; c = Container("
            "Artifact.load(Path(sys.argv[1])), Path(sys.argv[2])).start(); c.wait_boot(); "
            "print('up', flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "stay"),
                          str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "up"
    assert inits(), "the container runs"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 60  # a loaded machine (three test workers) is slow
    while inits() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = inits()
    for pid in left:  # this test's own container, should the runner have left it
        os.kill(int(pid), signal.SIGKILL)
    assert left == []


# -- tar -------------------------------------------------------------------------

def test_tarball_is_deterministic_and_plain(demo_root: Root, tmp_path: Path) -> None:
    """Bug: a tarball that differs from build to build or host to host: entries in
    directory-listing order, the files' own mtimes or owners, pax headers carrying
    atime/ctime, hard links that depend on the host's store optimisation.  Read back
    with Python's tarfile, independently of nixslave's writer."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    a = TarBackend().materialize(demo_root, tmp_path / "one" / "demo.tar",
                                 TarOptions(gcroot=False))
    b = TarBackend().materialize(demo_root, tmp_path / "two" / "demo.tar",
                                 TarOptions(gcroot=False))
    assert _sha(a.image) == _sha(b.image) == a.sha256 == b.sha256
    with tarfile.open(a.image) as tf:
        assert tf.pax_headers == {}
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode())
    assert len(set(names)) == len(names)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    assert all(m.mtime == 1 for m in members)
    assert all(m.pax_headers == {} for m in members)
    assert all(m.isdir() or m.isfile() or m.issym() for m in members)  # no hard links
    assert {n.split("/")[2] for n in names if n.startswith("nix/store/") and n.count("/") >= 2} \
        == {Path(p).name for p in demo_root.paths}
    byname = {m.name: m for m in members}
    assert byname["sbin/init"].linkname == f"{demo_root.toplevel}/init"
    assert byname["usr"].isdir() and byname["nix/store"].mode == 0o1775
    # the gzip variant is reproducible too, and holds the same tar
    g1 = TarBackend().materialize(demo_root, tmp_path / "one" / "demo.tar.gz",
                                  TarOptions(compression="gzip", gcroot=False))
    g2 = TarBackend().materialize(demo_root, tmp_path / "two" / "demo.tar.gz",
                                  TarOptions(compression="gzip", gcroot=False))
    assert _sha(g1.image) == _sha(g2.image)
    assert hashlib.sha256(gzip.decompress(g1.image.read_bytes())).hexdigest() == a.sha256


@pytest.mark.nspawn
def test_tarball_unpacks_into_a_root_that_boots(demo_root: Root, tmp_path: Path) -> None:
    """Bug: a tarball that is not a runnable root once unpacked the way ``machinectl
    import-tar`` does (GNU tar, numeric owners, modes kept): a missing /usr or
    /sbin/init, store symlinks broken, modes lost.  It is unpacked and booted."""
    a = TarBackend().materialize(demo_root, tmp_path / "demo.tar", TarOptions(gcroot=False))
    tree = tmp_path / "demo"
    tree.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(a.image), "-C", str(tree)],
                   check=True)
    r = subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet",
                        "--resolv-conf=off", "--timezone=off", "-M", "demo-tar", "-D",
                        str(tree), "/sbin/init"], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert f"NIXSLAVE-BOOT-OK {demo_root.toplevel}" in r.stdout.splitlines()


# -- OCI --------------------------------------------------------------------------

@pytest.mark.tools("skopeo", "umoci", "nix-hash")
def test_oci_layout_is_read_by_skopeo_and_umoci(oci_art: Artifact, demo_root: Root,
                                                tmp_path: Path) -> None:
    """Bug: an OCI layout the standard tools reject or misread (a digest or size that
    does not match its blob, a diff_id of the compressed bytes, an untagged index), or
    a rootfs that is not exactly the closure: a store path missing, one too many, or
    different bytes (each unpacked path must have its narHash)."""
    tag = f"oci:{oci_art.image}:latest"
    info = json.loads(subprocess.run(["skopeo", "inspect", tag], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["Digest"] == oci_art.extra["manifest"]
    assert info["Layers"] == oci_art.extra["layers"]
    assert len(info["Layers"]) == len(demo_root.paths) + 1  # one per path, and the top
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", tag],
                                       capture_output=True, text=True, check=True).stdout)
    assert config["config"]["Entrypoint"] == [f"{demo_root.toplevel}/init"]
    # recomputed from the blobs: digest of the bytes, diff_id of the uncompressed tar
    blobs = oci_art.image / "blobs" / "sha256"
    for digest, diff_id in zip(info["Layers"], config["rootfs"]["diff_ids"], strict=True):
        data = (blobs / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{oci_art.image}:latest", str(bundle)],
                   capture_output=True, text=True, check=True)
    rootfs = bundle / "rootfs"
    store = rootfs / "nix/store"
    assert sorted(os.listdir(store)) == sorted(Path(p).name for p in demo_root.paths)
    for info_ in demo_root.closure:
        got = subprocess.run(["nix-hash", "--type", "sha256",
                              str(store / Path(info_.path).name)],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert info_.nar_hash.startswith("sha256-")  # SRI, as nix path-info gives it
        want = base64.b64decode(info_.nar_hash.removeprefix("sha256-")).hex()
        assert got == want, info_.path
    assert os.readlink(rootfs / "sbin/init") == f"{demo_root.toplevel}/init"
    assert os.readlink(rootfs / "nix/var/nix/profiles/system") == demo_root.toplevel
    assert (rootfs / "etc/NIXOS").is_file()
    assert oct(os.lstat(store).st_mode & 0o7777) == oct(0o1775)


@pytest.mark.tools("podman", "runc")
def test_oci_image_runs_under_podman(oci_art: Artifact, demo_root: Root,
                                     tmp_path: Path) -> None:
    """Bug: an image podman pulls but cannot run (Entrypoint not the toplevel's init, a
    rootfs without the closure the init needs): the marker must name this toplevel.

    Environment, measured here: crun (podman's default runtime) refuses this host's
    hybrid cgroup v1/v2 mounts ("cgroups in hybrid mode not supported"), and podman's
    default RLIMIT_NOFILE/NPROC exceed the hard limits of a sandbox without
    CAP_SYS_RESOURCE, so the run uses runc and explicit, lower ulimits.  SYS_BOOT lets
    the demo's poweroff end the container.  Storage is private to the test."""
    runroot = Path(tempfile.mkdtemp(prefix="nxs-pod-", dir="/tmp"))  # podman: < 50 chars
    podman = ["podman", "--root", str(tmp_path / "storage"), "--runroot", str(runroot),
              "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc",
              "--log-level", "error"]
    try:
        r = subprocess.run([*podman, "run", "--rm", "-t", "--network", "none",
                            "--cap-add", "SYS_BOOT", "--ulimit", "nofile=1024:1024",
                            "--ulimit", "nproc=4096:4096",
                            # podman names the image after the path: the public name, as the
                            # build directory's ".demo.oci.nixslave" is no valid reference
                            f"oci:{oci_art.extra['published_as']}:latest"],
                           capture_output=True, text=True, timeout=180,
                           stdin=subprocess.DEVNULL)
        lines = [ln.strip() for ln in r.stdout.splitlines()]
        assert f"NIXSLAVE-BOOT-OK {demo_root.toplevel}" in lines, (r.stdout, r.stderr)
    finally:
        subprocess.run([*podman, "rm", "-af", "-t", "0"], capture_output=True)
        subprocess.run([*podman, "rmi", "-af"], capture_output=True)
        mounts = subprocess.run(["findmnt", "-rno", "TARGET"], capture_output=True,
                                text=True).stdout
        assert str(tmp_path / "storage") not in mounts and str(runroot) not in mounts
        shutil.rmtree(runroot, ignore_errors=True)


def test_images_share_the_layers_of_shared_store_paths(tmp_path: Path) -> None:
    """Bug: store layers that depend on the image (the machine's name or top files
    mixed in, entries in a different order), so two machines sharing busybox, kernel
    and initrd share no layer blob; or layers that group paths differently from image
    to image."""
    arts = {}
    for name in ("alpha", "beta"):
        r = rootmod.build(MachineSpec.parse({"name": name, "demo": True}))
        arts[name] = (r, OciBackend().materialize(r, tmp_path / f"{name}.oci",
                                                  OciOptions(gcroot=False)))
    (ra, a), (rb, b) = arts["alpha"], arts["beta"]
    layer_of = {}
    for r, art in ((ra, a), (rb, b)):
        for path, digest in zip(sorted(r.paths), art.extra["layers"][:-1], strict=True):
            layer_of[(art.name, Path(path).name)] = digest
    shared = {Path(p).name for p in ra.paths} & {Path(p).name for p in rb.paths}
    assert len(shared) >= 3  # busybox, kernel, initrd
    for name in shared:
        assert layer_of[("alpha", name)] == layer_of[("beta", name)], name
    only_a = {Path(p).name for p in ra.paths} - shared
    assert only_a and all(layer_of[("alpha", n)] not in b.extra["layers"] for n in only_a)


def test_layer_budget_keeps_the_most_shared_paths_apart(demo_root: Root) -> None:
    """Bug: a closure larger than the layer limit (Docker refuses more than 125) made
    into one layer per path anyway, or the paths that everything depends on folded
    into the catch-all layer, where no other image can share them."""
    groups = layer_groups(demo_root, OciOptions(max_layers=3))
    assert len(groups) == 2 and len(groups[0]) == 1  # one own layer, the rest together
    assert sorted(p for g in groups for p in g) == sorted(demo_root.paths)
    # The path most others refer to keeps its layer: busybox, referred to by the
    # toplevel and by the guest agent's script, where every other path has one
    # referrer (the toplevel) or none.  Nix's own referrer query says so.
    def referrers(p: str) -> int:
        out = subprocess.run(["nix-store", "--query", "--referrers", p], check=True,
                             capture_output=True, text=True).stdout.split()
        return len(set(out) & set(demo_root.paths) - {p})
    most = max(referrers(p) for p in demo_root.paths)
    assert [referrers(p) for p in groups[0]] == [most]
    assert groups[0] == [next(p for p in demo_root.paths if p.endswith("-busybox"))]
    assert layer_groups(demo_root, OciOptions(per_path_layers=False)) == [sorted(demo_root.paths)]


# -- every output ------------------------------------------------------------------

def test_every_container_output_is_reproducible(demo_root: Root, tmp_path: Path) -> None:
    """Bug: an nspawn tree whose modes follow the builder's umask or whose times are
    the copy's, or OCI blobs that carry the build time: two builds must be equal
    (tree fingerprint, manifest digest and every blob).  The tarball is covered above;
    here it goes through build_image's dispatch with the disk's options, as the CLI
    passes them."""
    from nixslave.build import build_image

    spec = MachineSpec.parse({"name": "demo", "demo": True})
    ns, oci, tars = [], [], []
    for d, umask in ((tmp_path / "1", 0o077), (tmp_path / "2", 0o002)):
        d.mkdir()
        old = os.umask(umask)  # two builders with different umasks
        try:
            ns.append(NspawnBackend().materialize(demo_root, d / "demo", NO_GCROOT))
            oci.append(OciBackend().materialize(demo_root, d / "demo.oci",
                                                OciOptions(gcroot=False)))
            tars.append(build_image(spec, d / "demo.tar",
                                    DiskOptions(format="tar", gcroot=False)))
        finally:
            os.umask(old)
    assert _fingerprint(ns[0].image) == _fingerprint(ns[1].image)
    assert oct(os.lstat(ns[0].image / "etc").st_mode & 0o777) == oct(0o755)
    assert oci[0].extra["manifest"] == oci[1].extra["manifest"]
    assert _fingerprint(oci[0].image) == _fingerprint(oci[1].image)
    assert tars[0].kind == "tar" and tars[0].sha256 == tars[1].sha256 != ""


_BUILD = """
import sys
from pathlib import Path
from nixslave import root
from nixslave.spec import MachineSpec
from nixslave.backends.{mod} import {cls}
r = root.build(MachineSpec.parse({{"name": "k", "demo": True}}))
{cls}().materialize(r, Path(sys.argv[1]),
                    progress=lambda m: print(m, file=sys.stderr, flush=True))
"""
BACKENDS = {"nspawn": ("nspawn", "NspawnBackend", "k", " store paths"),  # "copying N store paths"
            "tar": ("tar", "TarBackend", "k.tar", "writing the tarball"),
            "oci": ("oci", "OciBackend", "k.oci", "writing layer 2")}


def _kill_at(mod: str, cls: str, out: Path, stage: str, delay: float) -> None:
    """Start a build, SIGKILL it ``delay`` seconds after it reports ``stage``."""
    proc = subprocess.Popen([sys.executable, "-c", _BUILD.format(mod=mod, cls=cls), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = False
    for line in proc.stderr:
        if stage in line:
            seen = True
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert seen, f"the build never reported {stage!r}"


def _whole(out: Path, kind: str) -> Artifact:
    """The public name leads to one complete build of ``kind``; returns it."""
    assert out.is_symlink(), "the public name must be a published build"
    a = Artifact.load(out)
    build = Path(os.path.realpath(out)).parent
    assert a.kind == kind and a.image.parent == build and build.name == a.build
    if kind == "tar":
        assert _sha(a.image) == a.sha256
    elif kind == "nspawn":
        assert (build / f"{a.image.name}.nspawn").is_file()
        assert {p.name for p in (a.image / "nix/store").iterdir()} == {
            Path(p).name for p in nix.closure(a.toplevel)}
    else:
        index = json.loads((a.image / "index.json").read_text())
        manifest = index["manifests"][0]["digest"].removeprefix("sha256:")
        blobs = a.image / "blobs/sha256"
        m = json.loads((blobs / manifest).read_text())
        for d in [m["config"], *m["layers"]]:
            assert _sha(blobs / d["digest"].removeprefix("sha256:")) == \
                d["digest"].removeprefix("sha256:")
    return a


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_a_killed_build_leaves_nothing_at_the_target(kind: str, tmp_path: Path) -> None:
    """Bug: a backend that writes its output in place (or publishes the sidecar
    first): a build killed half-way leaves a partial tree, tarball or layout under
    the public name, or replaces a good artifact with a broken one.  Builds are
    killed at a stage and at delays after it: a first build leaves nothing or a whole
    artifact; a rebuild leaves the old build or a whole new one; the next build
    sweeps every scratch directory."""
    mod, cls, name, stage = BACKENDS[kind]
    for i, delay in enumerate((0.0, 0.05, 0.2, 0.5)):
        out = tmp_path / f"first{i}" / name
        out.parent.mkdir()
        _kill_at(mod, cls, out, stage, delay)
        if os.path.lexists(out):
            _whole(out, kind)
    out = tmp_path / name
    subprocess.run([sys.executable, "-c", _BUILD.format(mod=mod, cls=cls), str(out)],
                   check=True, capture_output=True)
    first = _whole(out, kind)
    for delay in (0.0, 0.2):
        _kill_at(mod, cls, out, stage, delay)
        again = _whole(out, kind)
        assert again.build == first.build or delay > 0
    subprocess.run([sys.executable, "-c", _BUILD.format(mod=mod, cls=cls), str(out)],
                   check=True, capture_output=True)
    _whole(out, kind)
    store = out.with_name(f".{name}.nixslave")
    left = sorted(p.name for p in store.iterdir())
    assert len(left) == 2 and left[1] == "lock" and re.fullmatch(r"b-[0-9a-f]{12}", left[0])


# -- the guest module ------------------------------------------------------------------

def test_container_module_evaluates_beside_nixpkgs_container_defaults(tmp_path: Path) -> None:
    """Bug: the container module carrying VM settings (fileSystems by label, kernel
    parameters, initrd modules: a container has no disks and no kernel), or clashing
    with what nixpkgs sets for every networkd container: container-config.nix's
    ``useHostResolvConf = mkDefault true`` against networkd's resolved, which
    resolved.nix refuses by assertion (nixpkgs issue 162686)."""
    plan = load_plan(TOPOLOGY)
    net = node_network(plan, "alpha")
    spec = MachineSpec.parse({"name": "alpha", "demo": True})
    text = container_module(spec, network_module=net.nixos_module)
    nix.instantiate_parse(text)
    guest = tmp_path / "guest.nix"
    guest.write_text(text)
    options = {("boot", "kernel", "sysctl"), ("networking", "hosts")}
    cfg = merge(eval_modules(guest) + eval_modules(DATA / "nixpkgs-container.nix"), options)
    assert cfg["boot.isContainer"] is True
    assert cfg["services.resolved.enable"] is True
    assert cfg["networking.useHostResolvConf"] is False  # resolved.nix's assertion holds
    assert cfg["networking.hostName"] == "alpha"
    assert cfg["nix.enable"] is False
    assert cfg["systemd.services.nixslave-boot-ok.serviceConfig.StandardOutput"] \
        == "journal+console"
    assert not [k for k in cfg if k.startswith(("fileSystems", "swapDevices", "boot.initrd",
                                                "boot.kernelParams"))]
    assert [k for k in cfg if k.startswith("boot.loader")] == ["boot.loader.grub.enable"]
    # the container's interfaces are matched by name (nspawn names them), MAC set
    assert cfg["systemd.network.networks.10-nxs-eth0.matchConfig.Name"] == "eth0"
    # a user's own plain setting still wins over ours
    user = tmp_path / "user.nix"
    user.write_text('{ ... }: { networking.hostName = "web"; '
                    "networking.useHostResolvConf = true; }")
    cfg = merge(eval_modules(guest) + eval_modules(user), options)
    assert cfg["networking.hostName"] == "web" and cfg["networking.useHostResolvConf"] is True
    with pytest.raises(Conflict):  # the model is not vacuous
        bad = tmp_path / "bad.nix"
        bad.write_text("{ ... }: { boot.isContainer = false; }")
        merge(eval_modules(guest) + eval_modules(bad), options)
