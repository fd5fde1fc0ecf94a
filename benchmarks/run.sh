#!/usr/bin/env bash
# Run a benchmark from a fresh clone: set up the venv(s) first, where the package registry is reachable, then the
# benchmark itself inside the loopback-only namespace (cluster/netns.sh), which reaches nothing but 127.0.0.1.
# Usage: bash benchmarks/run.sh NAME [ARGS...]   NAME: any benchmarks/NAME.py (sft_throughput, ppo_iteration, grpo_iteration,
#   serve_throughput, dpo_throughput, sampling)
set -euo pipefail
name="${1:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "$name" || ! -f "$here/$name.py" ]]; then
  echo "usage: bash benchmarks/run.sh NAME [ARGS...]  (NAME: a benchmarks/NAME.py)" >&2
  exit 2
fi
shift
# shellcheck disable=SC1091
. "$here/../cluster/env.sh"  # the project's venv (created and installed on first use); cds to the checkout
if [[ "$name" == ppo_iteration && " $* " != *" --skip-trl "* ]]; then
  python benchmarks/ppo_iteration.py --setup  # TRL 1.12's own venv
fi
exec bash cluster/netns.sh python "benchmarks/$name.py" "$@"
