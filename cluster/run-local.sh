#!/usr/bin/env bash
# The main job on one machine: set up the venv, then `rlhf run` (the embedded default RLHF pipeline, offline).
# Usage: bash cluster/run-local.sh [rlhf run arguments...]   e.g.  bash cluster/run-local.sh --out runs/default
set -euo pipefail
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec bash cluster/netns.sh rlhf run "$@"
