#!/usr/bin/env bash
# Set everything up, then run the whole test suite (every tier).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
nixslave_setup
cd "$NIXSLAVE_TOP"
ruff check nixslave tests bench
exec python -m pytest -p no:cacheprovider "$@"
