#!/usr/bin/env bash
# Set everything up, then run the whole test suite (every tier).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
nixslave_setup
cd "$NIXSLAVE_TOP"
ruff check nixslave tests bench examples
# Three workers, one file each at a time: the tests mostly wait on
# single-threaded TCG guests and appliance launches.  Measured on 2 cores:
# 23.2 min with two workers, 22.7 with three; serially it would be ~40.
# Pass -n 0 to run serially.
exec python -m pytest -p no:cacheprovider -n 3 --dist loadfile --durations=25 "$@"
