#!/usr/bin/env bash
# Set everything up, then show nixslave end to end on this machine.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
nixslave_setup
cd "$NIXSLAVE_TOP"
out=${NIXSLAVE_DEMO_DIR:-$NIXSLAVE_TOP/out/demo}
mkdir -p "$out"

echo "== nixslave doctor"
nixslave doctor --check nix --check tools --check qemu --check kvm || true

echo "== build the demo system's profile-less root"
nixslave root build --demo --json > "$out/root.json"
python -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["toplevel"], d["closurePaths"], "paths", round(d["narSize"]/2**20,1), "MiB")' "$out/root.json"

echo "== prepare it as a directory (closure + /etc/NIXOS + manifest, no profiles)"
rm -rf "$out/root"
nixslave root prepare --demo "$out/root"
ls "$out/root/nix/store"
