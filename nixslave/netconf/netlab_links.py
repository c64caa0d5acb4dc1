"""netlab import: links, their addressing and their output.

Split out of ``netlab.py`` along the importer's own seam: ``netlab.py``
reads the lab-wide settings, the nodes and the groups, and this mixin
takes over from there -- the address pools and named prefixes, links in
every netlab form (strings, lists, mappings, link groups), their type and
pool, static and pool-allocated prefixes, the address families, and the
links, segments and endpoints written to the builder. It runs on the
state ``_Netlab`` sets up (declared below), so the methods are the same
ones, only housed apart.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import TopologyError
from .importers import (
    Builder,
    Rec,
    as_list,
    check_ifname,
    integer,
    mapping,
    name_key,
    opaque,
    subnet,
    text,
)
from .netlab_schema import (
    INTERFACE_DROPPED,
    LINK_ATTRS,
    LINK_KEPT,
    LINK_USED,
    MODULES,
    NETLAB_POOLS,
    W_ALLOC,
    W_DROPPED,
    W_FAMILY,
    W_HOST_INDEX,
    W_KEPT,
    W_L2ONLY,
    W_NO_FAMILY,
    W_POOL,
    W_PREFIX_LEN,
    W_TYPE,
    W_UNKNOWN,
    W_UNNUMBERED,
    _index,
    _Link,
    _Member,
)


class _LinksMixin:
    """The addressing, link and output half of ``_Netlab``."""

    # set up by _Netlab.__init__ and its node and group passes
    b: Builder
    data: dict[Any, Any]
    specs: dict[str, dict[Any, Any]]
    kinds: dict[str, str]
    mtu_of: dict[int, list[str]]
    bridges: dict[str, str]

    # ---- addressing

    def _pools(self) -> None:
        """netlab's pools merged with the lab's, as netlab merges them."""
        b = self.b
        addressing = mapping(self.data.get("addressing"), b.at("addressing"))
        self.pools: dict[str, dict[str, Any]] = {k: dict(v) for k, v in NETLAB_POOLS.items()}
        self.pool_at: dict[str, dict[str, str]] = {k: {} for k in NETLAB_POOLS}
        for pname, spec in addressing.items():
            path = f"addressing.{pname}"
            pname = name_key(pname, b.at(path))
            spec = mapping(spec, b.at(path))
            pool = self.pools.setdefault(pname, {})
            at = self.pool_at.setdefault(pname, {})
            for k, v in spec.items():
                pool[str(k)] = v
                at[str(k)] = f"{path}.{k}"
            if pname not in NETLAB_POOLS and "ipv4" in spec and "prefix" not in spec:
                pool["prefix"] = 32 if "loopback" in pname else 24
            for k in spec:
                if k in ("start", "allocation", "mac"):
                    b.warn(W_POOL, f"{path}.{k}")
                elif k not in ("ipv4", "ipv6", "prefix", "prefix6", "unnumbered"):
                    b.warn(W_UNKNOWN, f"{path}.{k}")
        for pname, pool in self.pools.items():
            at = self.pool_at[pname]
            for fam in (4, 6):
                v = pool.get(f"ipv{fam}")
                if v is not None and not isinstance(v, bool):
                    pool[f"ipv{fam}"] = subnet(v, fam, b.at(at.get(f"ipv{fam}", "addressing")))
            for k in ("prefix", "prefix6"):
                if pool.get(k) is not None:
                    pool[k] = integer(pool[k], b.at(at.get(k, "addressing")), "a prefix length")
        named = mapping(self.data.get("prefix"), b.at("prefix"))
        self.named: dict[str, dict[str, Any]] = {}
        for pname, spec in named.items():
            path = f"prefix.{pname}"
            pname = name_key(pname, b.at(path))
            if isinstance(spec, str):
                spec = {"ipv6" if ":" in spec else "ipv4": spec}
            self.named[pname] = {"spec": mapping(spec, b.at(path)), "path": path}

    def _plen(self, pool: str, fam: int) -> int:
        p = self.pools.get(pool, {})
        if fam == 4:
            return int(p.get("prefix") or (32 if "loopback" in pool else 24))
        return int(p.get("prefix6") or 64)

    # ---- links

    def _links(self) -> list[_Link]:
        b = self.b
        out: list[_Link] = []
        for k, link in enumerate(as_list(self.data.get("links"), b.at("links"))):
            path = f"links[{k}]"
            if isinstance(link, dict) and "group" in link and "members" in link:
                shared = {kk: v for kk, v in link.items() if kk not in ("group", "members")}
                for i, m in enumerate(as_list(link["members"], b.at(f"{path}.members"))):
                    parsed = self._link(m, f"{path}.members[{i}]")
                    if parsed is not None:
                        for kk, v in shared.items():
                            parsed.attrs.setdefault(kk, v)
                        out.append(parsed)
                continue
            parsed = self._link(link, path)
            if parsed is not None:
                out.append(parsed)
        for link in out:
            self._classify(link)
        self._prefixes([ln for ln in out if ln.kind])
        return [ln for ln in out if ln.kind]

    def _link(self, link: Any, path: str) -> _Link | None:
        """One link in any of netlab's forms, as attributes and members."""
        b = self.b
        out = _Link(path, {})
        if isinstance(link, str):
            out.members = [_Member(n, {}, path) for n in
                           self._split(link, b.at(path))]
        elif isinstance(link, list):
            for i, n in enumerate(link):
                mpath = f"{path}[{i}]"
                if isinstance(n, dict):
                    out.members.append(_Member(name_key(n.get("node"), b.at(f"{mpath}.node")),
                                               n, mpath))
                else:
                    out.members.append(_Member(name_key(n, b.at(mpath)), {}, mpath))
        elif isinstance(link, dict):
            for key, val in link.items():
                kpath = f"{path}.{key}"
                if key == "interfaces":
                    for i, itf in enumerate(as_list(val, b.at(kpath))):
                        ipath = f"{kpath}[{i}]"
                        if isinstance(itf, str):
                            out.members.append(_Member(itf, {}, ipath))
                            continue
                        itf = mapping(itf, b.at(ipath), "each interface is {node: name, ...}")
                        out.members.append(_Member(name_key(itf.get("node"),
                                                            b.at(f"{ipath}.node")), itf, ipath))
                elif isinstance(key, str) and key in self.specs:
                    out.members.append(_Member(key, mapping(val, b.at(kpath)), kpath))
                elif isinstance(key, str) and (key in LINK_ATTRS or key in MODULES
                                               or key.startswith("_")):
                    out.attrs[key] = val
                else:
                    raise TopologyError(f"unknown node or link attribute {key!r}",
                                        where=b.at(path), hint="declare the node under nodes")
        else:
            raise TopologyError("a link must be a string, a list or a mapping", where=b.at(path),
                                hint="e.g. 'r1-r2' or [r1, r2]")
        for m in out.members:
            if m.raw not in self.specs:
                raise TopologyError(f"unknown node {m.raw!r}", where=b.at(m.path),
                                    hint="declare it under nodes")
        if out.attrs.get("disable") is True:  # netlab leaves the link out
            return None
        return out

    def _split(self, link: str, where: str) -> list[str]:
        """``r1-r2``, ``r1 - r2`` or ``r1-r2-r3``. netlab splits on '-';
        names with '-' are taken too, the longest known name winning at
        each step. Only candidates as long as the longest name are tried,
        which keeps a hostile ``a-a-a-...`` linear."""
        parts = [p.strip() for p in link.split("-")]
        names = self.specs
        longest = max((len(n) for n in names), default=0)
        out: list[str] = []
        i = 0
        while i < len(parts):
            best = 0
            cand = parts[i]
            for j in range(i + 1, len(parts) + 1):
                if j > i + 1:
                    cand = f"{cand}-{parts[j - 1]}"
                if len(cand) > longest:
                    break
                if cand in names:
                    best = j
            if not best:
                raise TopologyError(f"cannot split link {link!r} into known nodes", where=where,
                                    hint="use the list form [a, b]")
            out.append("-".join(parts[i:best]))
            i = best
        return out

    def _classify(self, link: _Link) -> None:
        """The link's type as netlab sets it, and the pool it draws from."""
        b = self.b
        t = link.attrs.get("type")
        n = len(link.members)
        if t is not None:
            t = text(t, b.at(f"{link.path}.type"), "lan, p2p or stub")
            if t in ("loopback", "tunnel", "vlan_member"):
                b.warn(W_TYPE, link.path)
                return
            if t not in ("lan", "p2p", "stub"):
                raise TopologyError(f"unknown link type {t!r}", where=b.at(f"{link.path}.type"),
                                    hint="lan, p2p or stub")
            if t == "p2p" and n != 2:
                raise TopologyError(f"a p2p link needs two nodes, found {n}",
                                    where=b.at(link.path), hint="use type: lan")
        elif n == 0:
            raise TopologyError("a link needs one node at least", where=b.at(link.path),
                                hint="e.g. 'r1-r2' or [r1, r2]")
        elif n == 2 and not any(self.kinds[m.raw] == "host" for m in link.members):
            t = "p2p"
        else:
            t = "stub" if n == 1 else "lan"
        link.kind = t
        pool = "p2p" if t == "p2p" else "lan"
        for key in ("pool", "role"):
            v = link.attrs.get(key)
            if v is None:
                continue
            v = text(v, b.at(f"{link.path}.{key}"), "name an address pool")
            if v in self.pools:
                link.pool, link.pool_at = v, f"{link.path}.{key}"
                return
            if key == "pool":
                raise TopologyError(f"unknown address pool {v!r}",
                                    where=b.at(f"{link.path}.pool"),
                                    hint="define it under addressing")
        link.pool = pool

    def _prefixes(self, links: list[_Link]) -> None:
        """Static prefixes: written on the link (or named under prefix:),
        then, for links drawing from a pool other than their type's, the
        pool's next free subnet in link order, as netlab allocates them."""
        b = self.b
        taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for link in links:
            pfx = link.attrs.get("prefix")
            at = f"{link.path}.prefix"
            if pfx is None:
                continue
            if pfx is False:
                b.warn(W_L2ONLY, at)
                link.odd = True
                continue
            if isinstance(pfx, str):
                try:
                    net = ipaddress.ip_network(pfx, strict=False)
                    pfx = {f"ipv{net.version}": pfx}
                except ValueError:
                    if pfx not in self.named:
                        raise TopologyError(f"{pfx!r} is neither a prefix nor a named prefix",
                                            where=b.at(at), hint="define it under prefix:, "
                                            "or write address/length") from None
                    named = self.named[pfx]
                    pfx, at = named["spec"], named["path"]
            pfx = mapping(pfx, b.at(at), "write a prefix, or {ipv4: ..., ipv6: ...}")
            for fam in (4, 6):
                v = pfx.get(f"ipv{fam}")
                if v is True:
                    b.warn(W_UNNUMBERED, f"{at}.ipv{fam}")
                elif v is False:
                    b.warn(W_NO_FAMILY, f"{at}.ipv{fam}")
                elif v is not None:
                    value = subnet(v, fam, b.at(f"{at}.ipv{fam}"))
                    link.prefix[fam] = (value, f"{at}.ipv{fam}")
                    taken.append(ipaddress.ip_network(value))
            for k in pfx:
                if k not in ("ipv4", "ipv6"):
                    b.warn(W_POOL, f"{at}.{k}")
        default_pool = {"p2p": "p2p", "lan": "lan", "stub": "lan"}
        nxt: dict[tuple[str, int], int] = {}
        for link in links:
            if link.attrs.get("unnumbered") is True or self.pools[link.pool].get("unnumbered"):
                b.warn(W_UNNUMBERED, link.pool_at or f"{link.path}.unnumbered")
                link.odd = True
                continue
            if link.attrs.get("prefix") is False:
                continue
            pool = self.pools[link.pool]
            if not any(isinstance(pool.get(f"ipv{f}"), str) for f in (4, 6)):
                b.warn(W_L2ONLY, link.pool_at or link.path)
                link.odd = True
                continue
            if link.pool == default_pool[link.kind]:
                continue
            for fam in (4, 6):
                base = pool.get(f"ipv{fam}")
                if fam in link.prefix or not isinstance(base, str):
                    continue
                link.prefix[fam] = (self._next(link.pool, fam, base, nxt, taken, link),
                                    link.pool_at)

    def _next(self, pname: str, fam: int, base: str, nxt: dict[tuple[str, int], int],
              taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network], link: _Link) -> str:
        pool = ipaddress.ip_network(base)
        plen = self._plen(pname, fam)
        if plen < pool.prefixlen or plen > pool.max_prefixlen:
            raise TopologyError(f"a /{plen} does not fit in pool {pname} ({pool})",
                                where=self.b.at(link.pool_at), hint="fix the pool's prefix")
        k = nxt.get((pname, fam), 0)
        size = 1 << (pool.max_prefixlen - plen)
        while True:
            if (k + 1) * size > pool.num_addresses:
                raise TopologyError(f"address pool {pname} ({pool}) is exhausted",
                                    where=self.b.at(link.pool_at), hint="enlarge the pool")
            cand = ipaddress.ip_network((int(pool.network_address) + k * size, plen))
            k += 1
            if not any(cand.overlaps(t) for t in taken if t.version == fam):  # type: ignore[arg-type, unused-ignore]
                break
        nxt[(pname, fam)] = k
        taken.append(cand)
        return str(cand)

    def _families(self, links: list[_Link]) -> None:
        """IPv4 and IPv6 are planned when some pool the lab uses, some
        prefix or some address has them; a family planned everywhere that
        netlab gives only some links is warned about."""
        b = self.b
        used = {"loopback"} if "router" in self.kinds.values() else set()
        used |= {ln.pool for ln in links}
        statics = {4: False, 6: False}
        for ln in links:
            for fam in ln.prefix:
                statics[fam] = True
            for m in ln.members:
                for fam in (4, 6):
                    if isinstance(m.spec.get(f"ipv{fam}"), str):
                        statics[fam] = True
        for fam in (4, 6):
            has = [p for p in sorted(used) if isinstance(self.pools[p].get(f"ipv{fam}"), str)]
            on = bool(has) or statics[fam]
            b.set_top(f"ipv{fam}", on, "addressing")
            if on:
                for p in sorted(used):
                    if not isinstance(self.pools[p].get(f"ipv{fam}"), str) and p in (
                            "lan", "p2p", "loopback"):
                        key = self.pool_at[p].get(f"ipv{fam}", f"addressing.{p}")
                        b.warn(W_FAMILY.format(fam=fam), key)
        pools: dict[str, str] = {}
        for role in ("lan", "p2p", "loopback", "mgmt"):
            for fam in (4, 6):
                v = self.pools[role].get(f"ipv{fam}")
                if isinstance(v, str):
                    pools[f"{role}{fam}"] = v
                    b.top_origin[f"pools.{role}{fam}"] = self.pool_at[role].get(
                        f"ipv{fam}", f"addressing.{role}")
        b.set_top("pools", pools, "addressing")
        for key, role, fam, lo, hi in (("lan_prefix_len4", "lan", 4, 8, 30),
                                       ("p2p_prefix_len4", "p2p", 4, 30, 31),
                                       ("lan_prefix_len6", "lan", 6, 48, 126),
                                       ("p2p_prefix_len6", "p2p", 6, 64, 127)):
            if not isinstance(self.pools[role].get(f"ipv{fam}"), str):
                continue
            plen = self._plen(role, fam)
            at = self.pool_at[role].get("prefix" if fam == 4 else "prefix6",
                                        f"addressing.{role}")
            if lo <= plen <= hi and (plen in (lo, hi) or role == "lan"):
                b.set_top(key, plen, at)
            elif plen != (24 if fam == 4 else 64) or role != "lan":
                b.warn(W_PREFIX_LEN, f"{at} (/{plen})")
        lo_len = self._plen("loopback", 4)
        if lo_len != 32:
            b.warn(W_PREFIX_LEN, self.pool_at["loopback"].get("prefix", "addressing.loopback"))

    # ---- output

    def _emit(self, link: _Link) -> None:
        """A p2p link, or a segment with a leg per member."""
        b = self.b
        attrs = link.attrs
        members = list(link.members)
        if link.kind == "p2p" and not any(
                isinstance(m.spec.get(f"ipv{f}"), str | int) and not isinstance(
                    m.spec.get(f"ipv{f}"), bool) for m in members for f in (4, 6)):
            members.sort(key=lambda m: m.raw)  # netlab gives the lower name the first address
        seg_opts: dict[str, Any] = {}
        rec = Rec(seg_opts, link.path)
        for fam, (pfx, at) in sorted(link.prefix.items()):
            seg_opts[f"prefix{fam}"] = pfx
            rec.fields[f"prefix{fam}"] = at
        if not link.prefix and not link.odd and not any(
                isinstance(m.spec.get(f"ipv{f}"), str) for m in members for f in (4, 6)):
            b.warn(W_ALLOC, link.path)
        if attrs.get("mtu") is not None:
            seg_opts["mtu"] = integer(attrs["mtu"], b.at(f"{link.path}.mtu"))
            rec.fields["mtu"] = f"{link.path}.mtu"
        if attrs.get("name") is not None:
            seg_opts["label"] = text(attrs["name"], b.at(f"{link.path}.name"),
                                     "a link name is text")
            rec.fields["label"] = f"{link.path}.name"
        data: dict[str, Any] = {}
        for k, v in attrs.items():
            key = str(k)
            if key in MODULES or key in LINK_KEPT:
                data[key] = opaque(v, b.at(f"{link.path}.{key}"))
                b.warn(W_KEPT, f"{link.path}.{key}")
            elif key in ("linkindex", "linkid"):
                b.warn(W_DROPPED, f"{link.path}.{key}")
            elif key not in LINK_USED and not key.startswith("_"):
                b.warn(W_UNKNOWN, f"{link.path}.{key}")
        if data:
            seg_opts["data"] = data
        bridge = attrs.get("bridge")
        if bridge is not None:
            bridge = text(bridge, b.at(f"{link.path}.bridge"), "a bridge name is text")
        ends = [self._end(link, m) for m in members]
        if link.kind == "p2p":
            rec.spec = {"endpoints": [e for e, _ in ends], **seg_opts}
            if bridge is not None:
                rec.spec["name"] = b.names.fresh(bridge)
                rec.fields["name"] = f"{link.path}.bridge"
            for i, (_, fields) in enumerate(ends):
                rec.fields.update({f"endpoints[{i}]{k}": v for k, v in fields.items()})
            b.links.append(rec)
            self.mtu_of[id(rec)] = [m.raw for m in members]
            return
        if bridge is not None and bridge in self.bridges:
            seg = self.bridges[bridge]
        else:
            seg = b.names.fresh(bridge if bridge is not None else f"lan{_index(link.path)}")
            if bridge is not None:
                self.bridges[bridge] = seg
            b.segments[seg] = rec
        self.mtu_of[id(b.segments[seg])] = self.mtu_of.get(id(b.segments[seg]), []) + [
            m.raw for m in members]
        for (ep, fields), m in zip(ends, members, strict=True):
            leg = Rec({"endpoints": [ep, seg]}, m.path)
            leg.fields.update({f"endpoints[0]{k}": v for k, v in fields.items()})
            b.links.append(leg)

    def _end(self, link: _Link, m: _Member) -> tuple[dict[str, Any], dict[str, str]]:
        """A member as an Endpoint, with the lab keys of its fields."""
        b = self.b
        out: dict[str, Any] = {"node": b.names.get(m.raw)}
        fields: dict[str, str] = {"": m.path}
        data: dict[str, Any] = {}
        for k, v in m.spec.items():
            key = str(k)
            at = f"{m.path}.{key}"
            if key == "node":
                continue
            if key == "ifname":
                ifname = check_ifname(b, v, at)
                if ifname:
                    out["ifname"], fields[".ifname"] = ifname, at
            elif key in ("ipv4", "ipv6"):
                fam = int(key[-1])
                addr = self._address(link, fam, v, at)
                if addr:
                    out[key], fields[f".{key}"] = addr, at
            elif key in MODULES:
                data[key] = opaque(v, b.at(at))
                b.warn(W_KEPT, at)
            elif key in INTERFACE_DROPPED or key.startswith("_"):
                b.warn(W_DROPPED, at)
            else:
                b.warn(W_UNKNOWN, at)
        if data:
            out["data"] = data
        return out, fields

    def _address(self, link: _Link, fam: int, v: Any, at: str) -> str | None:
        """An interface address: with a length, without one (the link's
        prefix length), a host number in the link's prefix, or true/false
        (unnumbered, none)."""
        b = self.b
        if v is True:
            b.warn(W_UNNUMBERED, at)
            return None
        if v is False:
            b.warn(W_NO_FAMILY, at)
            return None
        if isinstance(v, int):
            if fam not in link.prefix:
                b.warn(W_HOST_INDEX, at)
                return None
            net = ipaddress.ip_network(link.prefix[fam][0])
            if not 0 < v < net.num_addresses:
                raise TopologyError(f"host number {v} is outside {net}", where=b.at(at),
                                    hint="use a smaller number")
            return f"{net.network_address + v}/{net.prefixlen}"
        addr = text(v, b.at(at), "write an address, or address/length")
        if "/" in addr:
            return addr
        if fam in link.prefix:
            plen = ipaddress.ip_network(link.prefix[fam][0]).prefixlen
        else:
            plen = self._plen(link.pool, fam)
            if link.kind == "p2p" and link.pool == "p2p" and fam == 4 and plen not in (30, 31):
                plen = 30
        return f"{addr}/{plen}"
