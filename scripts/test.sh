#!/usr/bin/env bash
# Set everything up, then run the whole test suite (every tier).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
nixslave_setup
cd "$NIXSLAVE_TOP"
ruff check nixslave tests bench
# Two workers, one file each at a time: most tests wait on single-threaded
# TCG guests, so two cores run two files at once (pass -n 0 to run serially).
exec python -m pytest -p no:cacheprovider -n 2 --dist loadfile "$@"
