#!/usr/bin/env bash
# The test command: set up the venv, then run the whole suite (unit + slow multi-process stage runs) inside a
# loopback-only network namespace. Extra arguments go to pytest (e.g. -m "not slow" for the fast part only).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/env.sh"
exec bash cluster/netns.sh python -m pytest -q -p no:cacheprovider --timeout=1200 -rs "$@"
