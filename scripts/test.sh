#!/usr/bin/env bash
# Set everything up, then run the whole test suite (every tier).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
nixslave_setup
cd "$NIXSLAVE_TOP"
ruff check nixslave tests bench
# Three workers, one file each at a time: the tests wait on single-threaded
# TCG guests, appliance launches and subprocesses, so even two cores keep
# three files going (measured: 23 min with two workers, the CPUs 80 % busy).
# Pass -n 0 to run serially.
exec python -m pytest -p no:cacheprovider -n 3 --dist loadfile "$@"
