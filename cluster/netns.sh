#!/usr/bin/env bash
# Run a command inside a loopback-only network namespace, so Ray, torch.distributed and servers started by it
# bind 127.0.0.1 and reach nothing else. Falls back to a plain run where unshare is not permitted.
set -euo pipefail
if [ "${RLHF_IN_NETNS:-0}" != "1" ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && RLHF_IN_NETNS=1 exec "$@"' _ "$@"
fi
exec "$@"
