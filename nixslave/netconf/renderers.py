"""The guest's side of a plan: NixOS module, networkd files, a shell script
and /etc/hosts.

Every renderer names interfaces by matching the planned MAC, so the guest's
names agree with the host's wiring whatever order the NICs appear in.
Containers get no MAC from their backend, so they are matched by name and
their MAC is set instead.

Why the networkd units look the way they do (nixpkgs 24.11-26.05, systemd
255-258):

* A ``.link`` unit renames by MAC *and* ``Type=ether``: VLAN, bridge and
  bond devices inherit their parent's MAC, and a MAC-only match would try to
  rename them too (systemd.link(5), [Match] Type=).
* The ``.network`` unit matches the same way (MAC + ``Type=ether``) rather
  than by the planned name. A name match depends on the rename having
  happened; udev cannot rename into a name the kernel already gave another
  NIC (planned ``eth0``/``eth1`` swapped against kernel ``eth0``/``eth1``),
  and then a name match configures the *wrong* NIC with this one's
  addresses. The MAC is what the host wired, so it is the one fact that
  cannot race.
* Forwarding is a sysctl, never ``IPForward=``: systemd 256 ignores it, and
  nixpkgs' networkd.nix rejects it with ``assertRemoved "IPForward"``.

Under ``routing: ospf`` or ``bgp`` a router's routes come from FRR instead
(:class:`FrrConfig`); the busybox script has no daemon to run and installs
the static tables the planner computes for the same network instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import NodePlan, Plan, Route

PREFIX = "10-nxs-"
SYSCTL_FILE = "90-nxs-forwarding.conf"
"""render_networkd's forwarding file; it belongs in /etc/sysctl.d, not next
to the units (see :func:`install_dir`)."""

_FORWARDING_SYSCTLS = ("net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding")

ROUTES_PLAIN_SINCE = "24.11"
"""nixpkgs takes [Route] keys directly in ``routes`` from 24.11 on (PR 312472,
nixos/modules/system/boot/networkd.nix: ``routes`` is a list of
``mkSubsectionType "routeConfig"``, which still accepts and warns about the
old ``{ routeConfig = ...; }`` wrapper). 24.05 and older only know the
wrapper, so the module picks the form from ``lib.trivial.release``."""


def _nix_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _nix_lines(text: str, indent: str) -> str:
    """``text`` as a Nix indented string whose lines start at ``indent``
    (Nix strips the common indentation, so the text comes back as is)."""
    body = text.replace("''", "'''").replace("${", "''${")
    lines = [indent + line if line else "" for line in body.splitlines()]
    return "''\n" + "\n".join(lines) + "\n" + indent + "''"


def _nix_list(items: list[str]) -> str:
    return "[ " + " ".join(_nix_str(i) for i in items) + " ]" if items else "[ ]"


def _routes_by_dev(np: NodePlan) -> dict[str, list[Route]]:
    out: dict[str, list[Route]] = {}
    for r in np.routes:
        out.setdefault(r.dev, []).append(r)
    return out


def _match_by_mac(np: NodePlan) -> bool:
    return np.kind != "container"


def _loose_rp_filter(np: NodePlan) -> bool:
    """Routers and multi-homed nodes see replies arrive on another interface
    than the route back would use; strict reverse-path filtering (NixOS's
    firewall default) drops them."""
    return np.forwarding or len(np.interfaces) > 1


FRR_INTEGRATED_SINCE = "24.11"
"""nixpkgs 24.11 rewrote nixos/modules/services/networking/frr.nix (PR 327099):
daemons are enabled as ``services.frr.<daemon>d.enable`` (``ospfd``,
``ospf6d``, ``bgpd``) and configured by one integrated ``services.frr.config``
(``service integrated-vtysh-config``); the old ``services.frr.ospf.config``
and friends became ``mkRemovedOptionModule`` errors, and zebra, mgmtd and
staticd always run. Before 24.11 each daemon had ``services.frr.<name>
.{enable,config}`` (``ospf``, ``ospf6``, ``bgp``, ``zebra``) and a file of
its own. The module picks the form from ``lib.trivial.release``, like the
route form above; 24.11 to 26.05 all take the integrated form."""

OSPF_COST = 10
"""Every OSPF interface gets the same cost, so OSPF's shortest paths count
router hops as the planner does; without it FRR derives costs from link
speeds, which virtual NICs report inconsistently (or not at all)."""


@dataclass
class FrrConfig:
    """One router's FRR configuration under ``routing: ospf`` or ``bgp``.

    Kept per daemon, because before nixpkgs 24.11 every daemon reads its
    own file; :meth:`integrated` merges them into one frr.conf."""

    node: str
    daemons: list[str]  # new-style names: ospfd, ospf6d, bgpd
    zebra: list[str]
    interfaces: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    routers: dict[str, list[str]] = field(default_factory=dict)
    peering: list[str] = field(default_factory=list)
    """Interfaces that face another router: where the routing protocol
    must get through the firewall."""

    def _interfaces(self, daemons: list[str]) -> list[str]:
        out: list[str] = []
        for ifname, per in self.interfaces.items():
            lines = [ln for d in daemons for ln in per.get(d, [])]
            if lines:
                out += [f"interface {ifname}", *lines, "exit", "!"]
        return out

    def integrated(self) -> str:
        """frr.conf for ``service integrated-vtysh-config`` (nixpkgs >= 24.11)."""
        out = [*self.zebra, "!", *self._interfaces(self.daemons)]
        for d in self.daemons:
            out += [*self.routers.get(d, []), "!"]
        return "\n".join(out) + "\n"

    def per_daemon(self, daemon: str) -> str:
        """The file of one daemon (nixpkgs < 24.11); ``zebra`` for zebra's."""
        if daemon == "zebra":
            return "\n".join(self.zebra) + "\n"
        out = [*self._interfaces([daemon]), *self.routers.get(daemon, [])]
        return "\n".join(out) + "\n"


def frr_config(plan: Plan, node: str) -> FrrConfig | None:
    """The FRR configuration of a router under ``routing: ospf`` or ``bgp``
    (None for any other node or routing).

    OSPF: every routed interface in area 0 at cost :data:`OSPF_COST`,
    point-to-point on /31 and /127 links, passive where no other router
    listens, loopbacks advertised; OSPFv3 (ospf6d) for IPv6. BGP: one
    private AS per router, an eBGP session to every neighbouring router per
    address family, and each connected routed prefix and loopback announced
    with ``network`` (not ``redistribute connected``, which would leak the
    management network). The management network is never routed.
    ``no zebra nexthop kernel enable`` keeps zebra off kernel nexthop
    objects, which systemd-networkd deletes as foreign (FRR issue 14160)."""
    np = plan.node(node)
    if plan.routing not in ("ospf", "bgp") or np.kind != "router":
        return None
    topo = plan.topology
    zebra = [f"! routing: {plan.routing} for {node} in topology {plan.name}; "
             "generated by nixslave.netconf", "no zebra nexthop kernel enable"]
    routers_on = {nid: [m for m, _ in net.members if plan.nodes[m].kind == "router"]
                  for nid, net in plan.networks.items() if net.kind != "mgmt"}
    ifaces = [i for i in np.interfaces if i.kind != "mgmt"]
    peering = [i.name for i in ifaces if any(m != node for m in routers_on[i.link_id])]
    if plan.routing == "ospf":
        daemons = [d for d, on in (("ospfd", topo.ipv4), ("ospf6d", topo.ipv6)) if on]
        cfg = FrrConfig(node=node, daemons=daemons, zebra=zebra, peering=peering)
        for i in ifaces:
            per: dict[str, list[str]] = {}
            p2p = i.kind == "p2p"
            passive = i.name not in peering
            if "ospfd" in daemons:
                per["ospfd"] = [" ip ospf area 0", f" ip ospf cost {OSPF_COST}"]
                per["ospfd"] += [" ip ospf network point-to-point"] if p2p else []
                per["ospfd"] += [" ip ospf passive"] if passive else []
            if "ospf6d" in daemons:
                per["ospf6d"] = [" ipv6 ospf6 area 0", f" ipv6 ospf6 cost {OSPF_COST}"]
                per["ospf6d"] += [" ipv6 ospf6 network point-to-point"] if p2p else []
                per["ospf6d"] += [" ipv6 ospf6 passive"] if passive else []
            cfg.interfaces[i.name] = per
        if np.loopbacks:
            per = {}
            if "ospfd" in daemons and any(a.version == 4 for a in np.loopbacks):
                per["ospfd"] = [" ip ospf area 0", " ip ospf passive"]
            if "ospf6d" in daemons and any(a.version == 6 for a in np.loopbacks):
                per["ospf6d"] = [" ipv6 ospf6 area 0", " ipv6 ospf6 passive"]
            cfg.interfaces["lo"] = per
        if "ospfd" in daemons:
            cfg.routers["ospfd"] = ["router ospf", f" ospf router-id {np.router_id}", "exit"]
        if "ospf6d" in daemons:
            cfg.routers["ospf6d"] = ["router ospf6", f" ospf6 router-id {np.router_id}", "exit"]
        return cfg
    cfg = FrrConfig(node=node, daemons=["bgpd"], zebra=zebra, peering=peering)
    neighbours: list[tuple[str, int, int]] = []  # (address, family, AS)
    for i in ifaces:
        for m, ifname in plan.networks[i.link_id].members:
            peer = plan.nodes[m]
            if m == node or peer.kind != "router":
                continue
            for a in peer.interface(ifname).addresses:
                neighbours.append((str(a.ip), a.version, peer.asn or 0))
    block = ["router bgp " + str(np.asn), f" bgp router-id {np.router_id}",
             " no bgp ebgp-requires-policy", " no bgp default ipv4-unicast",
             " bgp bestpath as-path multipath-relax"]
    block += [f" neighbor {addr} remote-as {asn}" for addr, _, asn in neighbours]
    for fam, name in ((4, "ipv4"), (6, "ipv6")):
        if not (topo.ipv4 if fam == 4 else topo.ipv6):
            continue
        nets = [str(pfx) for i in ifaces for pfx in plan.networks[i.link_id].prefixes
                if pfx.version == fam]
        nets += [str(a.network) for a in np.loopbacks if a.version == fam]
        block += [" !", f" address-family {name} unicast"]
        block += [f"  network {n}" for n in nets]
        block += [f"  neighbor {addr} activate" for addr, v, _ in neighbours if v == fam]
        block += [" exit-address-family"]
    cfg.routers["bgpd"] = [*block, "exit"]
    return cfg


_OLD_DAEMON = {"ospfd": "ospf", "ospf6d": "ospf6", "bgpd": "bgp"}


def _nixos_frr(plan: Plan, cfg: FrrConfig) -> list[str]:
    """The module lines that run FRR with ``cfg`` (see FRR_INTEGRATED_SINCE),
    keep networkd off its routes and let the protocol through the firewall."""
    new = [f"      {d}.enable = true;" for d in cfg.daemons]
    new += ["      config = " + _nix_lines(cfg.integrated(), "        ") + ";"]
    old = ["      zebra.config = " + _nix_lines(cfg.per_daemon("zebra"), "        ") + ";"]
    for d in cfg.daemons:
        old += [f"      {_OLD_DAEMON[d]} = {{",
                "        enable = true;",
                "        config = " + _nix_lines(cfg.per_daemon(d), "          ") + ";",
                "      };"]
    out = [
        f"  # routing: {plan.routing}: FRR computes this router's routes",
        "  # (nixos/modules/services/networking/frr.nix; the option names changed in",
        f"  # nixpkgs {FRR_INTEGRATED_SINCE}: a file per daemon before, one integrated one since).",
        "  services.frr =",
        f"    if lib.versionAtLeast lib.trivial.release {_nix_str(FRR_INTEGRATED_SINCE)} then {{",
        *new,
        "    } else {",
        *old,
        "    };",
        "  # zebra's routes are foreign to networkd, which would flush them on every",
        "  # reconfiguration (networkd.conf(5), ManageForeignRoutes=).",
        "  systemd.network.config.networkConfig.ManageForeignRoutes = false;",
    ]
    if not cfg.peering:
        return out
    if plan.routing == "bgp":
        out.append("  # BGP sessions from the neighbouring routers")
        out += [f"  networking.firewall.interfaces.{_nix_str(i)}.allowedTCPPorts = [ 179 ];"
                for i in cfg.peering]
        return out
    nft = "\n".join(f'iifname "{i}" meta l4proto 89 accept comment "OSPF"' for i in cfg.peering)
    ipt = "\n".join(f"ip46tables -A nixos-fw -i {i} -p 89 -j nixos-fw-accept"
                    for i in cfg.peering)
    out += [
        "  # OSPF is IP protocol 89, not a port: one rule per firewall backend",
        "  networking.firewall.extraInputRules = lib.mkIf config.networking.nftables.enable "
        + _nix_lines(nft + "\n", "    ") + ";",
        "  networking.firewall.extraCommands = lib.mkIf (!config.networking.nftables.enable) "
        + _nix_lines(ipt + "\n", "    ") + ";",
    ]
    return out


def render_nixos(plan: Plan, node: str) -> str:
    """A NixOS module (systemd-networkd) for one node.

    Option names follow nixpkgs' nixos/modules/system/boot/networkd.nix,
    services/networking/firewall.nix and tasks/network-interfaces.nix. The
    switches a user may want to own (networkd, DHCP, wait-online, rp_filter)
    are ``lib.mkDefault``, as nixpkgs' qemu-vm.nix does.
    """
    np = plan.node(node)
    by_dev = _routes_by_dev(np)
    frr = frr_config(plan, node)
    # only an OSPF router's firewall rules depend on config (the nftables switch)
    ospf = frr is not None and plan.routing == "ospf"
    args = "{ config, lib, ... }:" if ospf else "{ lib, ... }:"
    out = [
        f"# Network of node {node} in topology {plan.name}; generated by nixslave.netconf.",
        args,
        "let",
        f"  # [Route] keys go straight into routes from nixpkgs {ROUTES_PLAIN_SINCE} on;",
        "  # older releases need the routeConfig wrapper (nixos/modules/system/boot/networkd.nix).",
        "  nxsRoute = r:",
        f"    if lib.versionAtLeast lib.trivial.release {_nix_str(ROUTES_PLAIN_SINCE)}",
        "    then r else { routeConfig = r; };",
        "in",
        "{",
        "  networking.useNetworkd = lib.mkDefault true;",
        "  networking.useDHCP = lib.mkDefault false;",
        "  systemd.network.enable = true;",
        "  # Every link is RequiredForOnline=no, so wait-online would only time out (120 s).",
        "  systemd.network.wait-online.enable = lib.mkDefault false;",
    ]
    if _loose_rp_filter(np):
        out += [
            "  # Asymmetric paths through a router or a multi-homed node: strict rp_filter",
            "  # drops them (nixos/modules/services/networking/firewall.nix).",
            '  networking.firewall.checkReversePath = lib.mkDefault "loose";',
        ]
    for i in np.interfaces:
        unit = _nix_str(PREFIX + i.name)
        mac, name, mtu = _nix_str(i.mac), _nix_str(i.name), _nix_str(str(i.mtu))
        if _match_by_mac(np):
            out += [
                f"  systemd.network.links.{unit} = {{",
                f"    matchConfig.MACAddress = {mac};",
                '    matchConfig.Type = "ether";',
                f"    linkConfig.Name = {name};",
                f"    linkConfig.MTUBytes = {mtu};",
                "  };",
                f"  systemd.network.networks.{unit} = {{",
                f"    matchConfig.MACAddress = {mac};",
                '    matchConfig.Type = "ether";',
            ]
        else:
            out += [
                f"  systemd.network.networks.{unit} = {{",
                f"    matchConfig.Name = {name};",
                f"    linkConfig.MACAddress = {mac};",
            ]
        out.append(f"    address = {_nix_list([str(a) for a in i.addresses])};")
        routes = by_dev.get(i.name, [])
        gws = [str(r.via) for r in routes if r.is_default]
        if gws:
            out.append(f"    gateway = {_nix_list(gws)};")
        rest = [r for r in routes if not r.is_default]
        if rest:
            out.append("    routes = [")
            out += [f"      (nxsRoute {{ Destination = {_nix_str(str(r.destination))}; "
                    f"Gateway = {_nix_str(str(r.via))}; }})" for r in rest]
            out.append("    ];")
        out += [
            f"    linkConfig.MTUBytes = {mtu};",
            '    linkConfig.RequiredForOnline = "no";',
            "    networkConfig.IPv6AcceptRA = false;",
            '    networkConfig.LinkLocalAddressing = "ipv6";',
            "  };",
        ]
    if np.loopbacks:
        out += [
            f"  systemd.network.networks.{_nix_str(PREFIX + 'lo')} = {{",
            '    matchConfig.Name = "lo";',
            f"    address = {_nix_list([str(a) for a in np.loopbacks])};",
            "  };",
        ]
    if np.forwarding:
        out.append("  boot.kernel.sysctl = {")
        out += [f"    {_nix_str(k)} = 1;" for k in _FORWARDING_SYSCTLS]
        out.append("  };")
    if frr is not None:
        out += _nixos_frr(plan, frr)
    out.append("  networking.hosts = {")
    merged: dict[str, list[str]] = {}
    for h in np.hosts:
        merged.setdefault(str(h.address), []).extend(h.names)
    for addr, names in merged.items():
        out.append(f"    {_nix_str(addr)} = {_nix_list(names)};")
    out += ["  };", "}", ""]
    return "\n".join(out)


def _ini(sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    lines = ["# generated by nixslave.netconf"]
    for name, items in sections:
        lines.append(f"\n[{name}]")
        lines += [f"{k}={v}" for k, v in items]
    return "\n".join(lines) + "\n"


FRR_FILE = "frr.conf"
"""render_networkd's FRR configuration of an ospf/bgp router (integrated
form: /etc/frr/vtysh.conf needs ``service integrated-vtysh-config`` and
/etc/frr/daemons must enable the daemons named in its first line)."""
NETWORKD_CONF_FILE = "90-nxs-frr.conf"
"""networkd.conf.d drop-in that keeps networkd off the routes FRR installs."""


def install_dir(filename: str) -> str:
    """Where a file of :func:`render_networkd` belongs on the guest: units in
    /etc/systemd/network, the forwarding sysctls in /etc/sysctl.d (networkd
    ignores a ``.conf`` file next to its units, so a router put there would
    silently not forward), FRR's configuration in /etc/frr and networkd's
    own settings in /etc/systemd/networkd.conf.d."""
    if filename == FRR_FILE:
        return "/etc/frr"
    if filename == NETWORKD_CONF_FILE:
        return "/etc/systemd/networkd.conf.d"
    return "/etc/sysctl.d" if filename.endswith(".conf") else "/etc/systemd/network"


def render_networkd(plan: Plan, node: str) -> dict[str, str]:
    """Plain systemd-networkd units, file name -> content.

    A router also gets :data:`SYSCTL_FILE`, a sysctl.d file that turns on
    forwarding: ``IPForward=`` is ignored since systemd 256, and its
    successors ``IPv4Forwarding=``/``IPv6Forwarding=`` are unknown before
    256. Install each file with :func:`install_dir`.
    """
    np = plan.node(node)
    by_dev = _routes_by_dev(np)
    files: dict[str, str] = {}
    for i in np.interfaces:
        link = [("MTUBytes", str(i.mtu)), ("RequiredForOnline", "no")]
        if _match_by_mac(np):
            match = [("MACAddress", i.mac), ("Type", "ether")]
            files[f"{PREFIX}{i.name}.link"] = _ini([
                ("Match", match),
                ("Link", [("Name", i.name), ("MTUBytes", str(i.mtu))]),
            ])
        else:
            match = [("Name", i.name)]
            link.insert(0, ("MACAddress", i.mac))
        network = [("Address", str(a)) for a in i.addresses]
        routes = by_dev.get(i.name, [])
        network += [("Gateway", str(r.via)) for r in routes if r.is_default]
        network += [("IPv6AcceptRA", "no"), ("LinkLocalAddressing", "ipv6")]
        sections = [("Match", match), ("Link", link), ("Network", network)]
        for r in routes:
            if not r.is_default:
                sections.append(("Route", [("Destination", str(r.destination)),
                                           ("Gateway", str(r.via))]))
        files[f"{PREFIX}{i.name}.network"] = _ini(sections)
    if np.loopbacks:
        files[f"{PREFIX}lo.network"] = _ini([
            ("Match", [("Name", "lo")]),
            ("Network", [("Address", str(a)) for a in np.loopbacks]),
        ])
    frr = frr_config(plan, node)
    if frr is not None:
        files[FRR_FILE] = (f"! daemons: {' '.join(frr.daemons)}\n"
                           "service integrated-vtysh-config\n" + frr.integrated())
        files[NETWORKD_CONF_FILE] = _ini([("Network", [("ManageForeignRoutes", "no")])])
    if np.forwarding:
        files[SYSCTL_FILE] = "\n".join([
            f"# forwarding for router {node}; generated by nixslave.netconf.",
            "# Install in /etc/sysctl.d/ (systemd-sysctl), not /etc/systemd/network/.",
            *(f"{k} = 1" for k in _FORWARDING_SYSCTLS),
        ]) + "\n"
    return files


_SH_HEAD = r"""#!/bin/sh
# Network of node {node} in topology {topo}; generated by nixslave.netconf.
# Runs under busybox sh with busybox ip: NICs are found by MAC in /sys/class/net.
set -e

nxs_by_mac() {{
    for d in /sys/class/net/*; do
        if [ "$(cat "$d/address" 2>/dev/null)" = "$1" ]; then
            echo "${{d##*/}}"
            return 0
        fi
    done
    return 1
}}

# nxs_claim MAC TMPNAME NAME: rename the NIC with MAC to TMPNAME; a NIC that
# already has NAME (a container's veth) gets the MAC instead.
nxs_claim() {{
    cur=$(nxs_by_mac "$1") || cur=""
    if [ -z "$cur" ]; then
        if [ -e "/sys/class/net/$3" ]; then
            ip link set dev "$3" down
            ip link set dev "$3" address "$1"
            cur=$3
        else
            echo "nixslave-net: no interface with MAC $1 for $3" >&2
            exit 1
        fi
    fi
    ip link set dev "$cur" down
    if [ "$cur" != "$2" ]; then
        ip link set dev "$cur" name "$2"
    fi
}}

# nxs_up TMPNAME NAME MTU: final name, no stale addresses, no DAD delay
nxs_up() {{
    ip link set dev "$1" name "$2"
    ip addr flush dev "$2" || true
    ip link set dev "$2" mtu "$3"
    if [ -w "/proc/sys/net/ipv6/conf/$2/accept_dad" ]; then
        echo 0 > "/proc/sys/net/ipv6/conf/$2/accept_dad"
    fi
    ip link set dev "$2" up
}}

ip link set dev lo up
"""


def render_sh(plan: Plan, node: str) -> str:
    """A POSIX shell script with busybox ``ip`` commands: rename by MAC,
    addresses, routes, forwarding. Safe to run twice."""
    np = plan.node(node)
    out = [_SH_HEAD.format(node=node, topo=plan.name)]
    routes = plan.static_routes(node)
    if routes is not np.routes:
        out += [f"# routing: {plan.routing} in the topology, but busybox has no routing daemon:",
                "# these are the static routes the planner computes for the same network.", ""]
    tmp = {i.name: f"nxs{k}tmp" for k, i in enumerate(np.interfaces)}
    out += [f"nxs_claim {i.mac} {tmp[i.name]} {i.name}" for i in np.interfaces]
    out += [f"nxs_up {tmp[i.name]} {i.name} {i.mtu}" for i in np.interfaces]
    out += [f"ip addr add {a} dev {i.name}" for i in np.interfaces for a in i.addresses]
    for a in np.loopbacks:
        out.append(f"ip addr del {a} dev lo 2>/dev/null || true")
        out.append(f"ip addr add {a} dev lo")
    if np.forwarding:
        out += [
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
            "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ]
    for r in routes:
        fam = "-6 " if r.destination.version == 6 else ""
        dest = "default" if r.is_default else str(r.destination)
        out.append(f"ip {fam}route replace {dest} via {r.via} dev {r.dev}")
    out.append("")
    return "\n".join(out)


def render_hosts(plan: Plan, node: str) -> str:
    """/etc/hosts with every node's primary addresses."""
    np = plan.node(node)
    lines = [
        f"# hosts of topology {plan.name} for {node}; generated by nixslave.netconf",
        "127.0.0.1 localhost",
        "::1 localhost",
    ]
    width = max((len(str(h.address)) for h in np.hosts), default=0)
    lines += [f"{h.address!s:<{width}} {' '.join(h.names)}" for h in np.hosts]
    return "\n".join(lines) + "\n"


RENDERERS = {"nixos": render_nixos, "sh": render_sh, "hosts": render_hosts}
