"""What a typed caller of nixslave's public API writes; type-checked, never run.

tests/test_api.py runs ``mypy --strict`` on this file.  Every public
function is called with each of its parameters named, and its result is
pinned with ``assert_type``: a public function that loses an annotation
(returning ``Any``), renames or drops a parameter, or changes a result type
fails the check here, in the caller's terms.  Nothing below runs (the
module only defines functions), so no image, guest or Nix is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, assert_type

import nixslave
from nixslave import netconf
from nixslave.progress import Progress


def describe_and_build(out: Path, topology: Path) -> nixslave.Artifact:
    spec = nixslave.MachineSpec(name="web-1", demo=True, boot="direct", layout="disk",
                                memory=1024, cpus=2, halt=False)
    assert_type(spec.source, str)
    assert_type(spec.to_json(), dict[str, Any])
    assert_type(nixslave.MachineSpec.parse({"name": "web-1", "demo": True}),
                nixslave.MachineSpec)

    steps: list[str] = []
    root = nixslave.build_root(spec, network=None, progress=steps.append)
    assert_type(root, nixslave.Root)
    assert_type(root.toplevel, str)
    assert_type(root.prepare(out / "tree", include_store=True, progress=print), Path)
    assert_type(root.to_json(), dict[str, object])

    plan = netconf.plan(netconf.load_topology(topology))
    net = nixslave.node_network(plan, "edge")
    assert_type(net, nixslave.NodeNetwork)
    assert_type(nixslave.build_root(spec, network=net), nixslave.Root)

    options = nixslave.DiskOptions(format="qcow2", gcroot=False, checksum=True)
    art = nixslave.build_image(spec, out, options, topology=topology, node="edge",
                               progress=logging.getLogger("lab").info)
    assert_type(art, nixslave.Artifact)
    assert_type(art.to_json(), dict[str, Any])
    assert_type(nixslave.Artifact.load(out), nixslave.Artifact)
    return art


def existing_images(image: Path, root: nixslave.Root) -> None:
    say: Progress = print
    assert_type(nixslave.inspect_image(image, store_image=None, health=True, progress=say),
                nixslave.ImageReport)
    assert_type(nixslave.inspect_images([image], progress=say),
                list[nixslave.ImageReport | nixslave.ImageError])
    up = nixslave.upgrade_image(image, root=root, source=None, gc=True, progress=say)
    assert_type(up, nixslave.UpgradeReport)
    assert_type(up.to_json(), dict[str, Any])
    fixed = nixslave.repair_image(image, dry_run=True, backup=False, store_image=None,
                                  progress=say)
    assert_type(fixed, nixslave.RepairReport)
    assert_type(fixed.findings, list[nixslave.Finding])
    assert_type(fixed.healthy, bool)
    assert_type(nixslave.image_health(image, store_image=None, progress=say), nixslave.Health)
    installed = nixslave.install_root(image, root, partition=None, new_partition=True,
                                      force=False, progress=say)
    assert_type(installed, nixslave.InstallReport)


def networks(path: Path) -> None:
    topo = netconf.topology_from_data({"name": "pair", "nodes": ["a", "b"],
                                       "links": [["a", "b"]]}, source="api_usage")
    assert_type(topo, netconf.Topology)
    assert_type(netconf.load_topology(path), netconf.Topology)
    plan = netconf.plan(topo)
    assert_type(plan, netconf.Plan)
    assert_type(plan.nodes, dict[str, netconf.NodePlan])
    assert_type(plan.node("a").interfaces, list[netconf.InterfacePlan])
    assert_type(plan.node("a").routes, list[netconf.Route])
    assert_type(plan.hosts, list[netconf.HostEntry])
    assert_type(plan.networks, dict[str, netconf.NetworkPlan])
    assert_type(plan.peers("a"), dict[str, list[str]])
    assert_type(plan.to_json(), dict[str, Any])
    assert_type(netconf.json_schema(), dict[str, Any])


def run(artifacts: list[nixslave.Artifact], plan: netconf.Plan) -> bool:
    results = nixslave.run_artifacts(artifacts, plan=plan, nodes=["edge"], rundir=None,
                                     timeout=300.0, echo=False, wait_pings=True, gcroot=False,
                                     progress=lambda message: None)
    assert_type(results, list[nixslave.GuestResult])
    assert_type(results[0].pings, dict[str, bool])
    assert_type(results[0].to_json(), dict[str, object])
    return all(r.ok for r in results)


def errors() -> None:
    try:
        describe_and_build(Path("web-1.qcow2"), Path("lab.yml"))
    except nixslave.SpecError as exc:
        assert_type(exc.where, str)
    except (nixslave.NixError, nixslave.RootError) as exc:
        assert_type(exc.hint, str)
    except (nixslave.BuildError, nixslave.ImageError, nixslave.RunError,
            nixslave.ToolError) as exc:
        assert_type(exc.layer, str)
    except nixslave.NixslaveError as exc:
        assert_type(exc.what, str)
    except (netconf.TopologyError, netconf.WiringError) as exc:
        assert_type(exc.where, str)
    except netconf.NetconfError as exc:
        assert_type(exc.hint, str)
