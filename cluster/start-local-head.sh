#!/usr/bin/env bash
# Start a Ray head on this machine (job server and dashboard on http://127.0.0.1:8265) to try `rlhf submit`.
#
#   cluster/start-local-head.sh            # then: rlhf submit smoke --address http://127.0.0.1:8265 --follow
#   ray stop                               # when done (stops every Ray process of this user on the machine)
#
# The head runs from the project's virtual environment, so jobs' drivers find torch, deepspeed and ray there.
# Token auth is on: the token is created in ~/.ray/auth_token if missing, and `rlhf submit` reads it from there.
# Env: RAY_DASHBOARD_PORT (8265), RAY_GCS_PORT (6379), RAY_NUM_CPUS (all), RAY_TEMP_DIR (Ray's default);
# extra arguments go to `ray start` (e.g. --block to keep it in the foreground).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  # shellcheck disable=SC1091
  . "$repo/cluster/env.sh"  # the project's venv, created and installed on first use (a fresh clone has none)
fi
export RAY_AUTH_MODE=token
ray get-auth-token --generate >/dev/null
args=(--head --include-dashboard=true --dashboard-host=127.0.0.1
      --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" --port="${RAY_GCS_PORT:-6379}" --disable-usage-stats)
[[ -n "${RAY_NUM_CPUS:-}" ]] && args+=(--num-cpus="$RAY_NUM_CPUS")
[[ -n "${RAY_TEMP_DIR:-}" ]] && args+=(--temp-dir="$RAY_TEMP_DIR")
echo "[rlhf] starting a Ray head: ray start ${args[*]} $*" >&2
exec ray start "${args[@]}" "$@"
