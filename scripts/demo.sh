#!/usr/bin/env bash
# Set everything up, then show nixslave end to end on this machine:
# two machines from one topology, materialized as qcow2 disks without a VM,
# booted together under qemu, pinging each other over the planned network.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
nixslave_setup
cd "$NIXSLAVE_TOP"
out=${NIXSLAVE_DEMO_DIR:-$NIXSLAVE_TOP/out/demo}
topology=examples/pair.yml
mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "nixslave doctor"
nixslave doctor --check nix --check tools --check qemu --check kvm || true

step "the network plan for $topology (addresses, MACs, names, routes)"
nixslave net plan "$topology"

for node in alpha beta; do
    step "build $node: demo system + its plan -> $out/$node.qcow2 (mkfs.ext4 -d, no VM)"
    nixslave image build --demo --topology "$topology" --node "$node" \
        --format qcow2 -o "$out/$node.qcow2"
done

step "boot both under qemu, wired by the same plan; each pings the other"
nixslave run "$out/alpha.qcow2" "$out/beta.qcow2"

step "inspect alpha offline (libguestfs)"
nixslave image inspect "$out/alpha.qcow2" | grep -E 'is_nixslave|toplevel|layout|boot|closure_count|store_complete'

step "host GC roots that keep both closures alive"
nixslave gc list alpha beta
