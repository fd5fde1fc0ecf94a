#!/usr/bin/env bash
# The test command: set up the venv, then run the whole suite (unit + slow multi-process stage runs) inside a
# loopback-only network namespace. Extra arguments go to pytest (e.g. -m "not slow" for the fast part only).
# A hung suite is interrupted after RLHF_TEST_BUDGET (default 60m) with SIGINT, so pytest still prints where it was
# and every failure so far instead of being killed silently by an outer CI limit.
set -euo pipefail
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/env.sh"
exec bash cluster/netns.sh timeout -s INT -k 120 "${RLHF_TEST_BUDGET:-60m}" \
  python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 -rfEs "$@"
