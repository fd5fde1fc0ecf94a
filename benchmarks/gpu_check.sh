#!/usr/bin/env bash
# The GPU run (issue 19): one script, one device call of <= 8-9 minutes, that measures the real-scale path on one GPU:
#   matmul     bf16 matmul rate (the MFU denominator) and the device copy rate (the sampling bandwidth bound)
#   sampling   eager vs static-cache/CUDA-graph sampling, 1.1B bf16, 64 prompts x 256 tokens, share of the bound
#   sft        SFT of the 1.1B model at seq 2048: tokens/s, MFU, peak memory against `rlhf plan` (Liger kernels;
#              sft_hf, transformers' own layers, runs only if that fails)
#   ppo        PPO iterations of the 1.1B model, all four roles on the one GPU: phase times, peak memory per role
#              against the plan
#   multirank  2 ranks on CUDA tensors in one process group on the one GPU (NCCL if it takes two ranks on one
#              device, else gloo): SFT with 2 workers ZeRO-2 and a PPO actor role with 2 workers
#   serve      the scoring service on the GPU: batched at 64 clients vs one request at a time
#   pipeline   the default `rlhf` pipeline on CUDA end to end (then: every manifest complete, report figures)
# Run: bash benchmarks/gpu_check.sh [--dry-run]   (device: after benchmarks/gpu_wheels.sh built .whl-b here; --dry-run: CPU)
# GPU_CHECK_STEPS="sampling ppo" runs only those steps (a rerun of failed ones); GPU_CHECK_BUDGET_S caps the whole run.
#
# On the device nothing is fetched: .whl-b/site.tar.xz (the packages the image lacks) is unpacked to /tmp/site.
# Each step runs in its own process under a deadline, a failed step does not stop the others, and the script
# exits 1 if any failed. Writes benchmarks/results/gpu_check.json (+ the log) and copies both to $OUT when set.
# --dry-run (CI, no GPU, no wheels): checks both scripts' syntax, validates the configs and the pipeline's GPU
# overrides, runs each step's code at toy sizes on CPU, writes the report under $GPU_CHECK_WORK only.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
case "${1:-}" in --dry-run) DRY=1 ;; "") ;; *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;; esac
PY="${PYTHON:-python3}"
WORK="${GPU_CHECK_WORK:-/tmp/rlhf-gpu-check}"
PIPELINE="${GPU_CHECK_PIPELINE:-rlhf}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-530}"   # the device call's limit is 600 s: leave time to copy results back
SLACK=1                                  # step deadlines x SLACK: a dry run on a shared 2-core CI box is slow
STEPS="${GPU_CHECK_STEPS:-matmul sampling sft ppo multirank serve pipeline}"
if [ $DRY -eq 1 ]; then SLACK=6; BUDGET_S="${GPU_CHECK_BUDGET_S:-2400}"; fi
PARTS="$WORK/parts"
START=$(date +%s)
rm -rf "$PARTS" "$WORK/pipeline" "$WORK/work/sft-run"
mkdir -p "$PARTS" "$WORK/work"
# The log goes straight to $OUT on the device, so it comes back even if the call is cut off.
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then LOG="$OUT/gpu_check.log"; else LOG="$WORK/gpu_check.log"; fi
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RLHF_CACHE="$WORK/cache"

log() { echo "[gpu $(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
FAILED=()
# step NAME MAX_SECONDS CMD...: SIGINT at the deadline lets Python (and Ray's atexit) shut down; KILL 20 s later.
wanted() {  # a step runs when named in STEPS, or when a named step needs what it makes
  case $1 in
    model) wanted sampling || wanted sft || wanted ppo; return ;;
    pipeline_overrides) wanted pipeline; return ;;
  esac
  case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}
step() {
  local name=$1 limit=$(( $2 * SLACK )); shift 2
  if ! wanted "$name"; then return; fi
  local remaining; remaining=$(left)
  if [ "$limit" -gt "$remaining" ]; then limit=$remaining; fi
  if [ "$limit" -le 5 ]; then log "SKIPPED $name: out of time"; FAILED+=("$name"); return; fi
  log "step $name (at most ${limit}s)"
  timeout --signal=INT --kill-after=20 "$limit" "$@"
  local rc=$?
  if [ $rc -eq 0 ]; then log "ok $name"; else log "FAILED $name (rc=$rc)"; FAILED+=("$name"); fi
}

bash -n benchmarks/gpu_wheels.sh && bash -n benchmarks/gpu_check.sh || { log "syntax error in a script"; exit 2; }
if [ $DRY -eq 1 ]; then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  GPUS=1
else
  if [ ! -f .whl-b/site.tar.xz ]; then log ".whl-b/site.tar.xz missing: run bash benchmarks/gpu_wheels.sh here and carry .whl-b"; exit 3; fi
  (cd .whl-b && sha256sum -c --quiet site.tar.xz.sha256) || { log ".whl-b/site.tar.xz is damaged"; exit 3; }
  mkdir -p /tmp/site && tar -xJf .whl-b/site.tar.xz -C /tmp/site || exit 3
  # grpcio-reflection's generated stubs refuse a grpcio older than the one they were generated with (1.85.1);
  # the image's grpcio 1.84 serves the same reflection API, so the guard is lifted rather than grpcio replaced.
  sed -i 's/^if _version_not_supported:/if False:/' /tmp/site/grpc_reflection/v1alpha/reflection_pb2_grpc.py
  export PYTHONPATH="/tmp/site:$ROOT"
  log "unpacked $(ls /tmp/site | wc -l) entries to /tmp/site"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  [ "$GPUS" -ge 1 ] || { log "no CUDA device visible"; exit 3; }
  "$PY" -c 'import deepspeed, ray, ray.train.torch, ray.serve, pydantic, fastapi, uvicorn, transformers, torch, stages.sft, stages.ppo
print("[gpu] imports ok: torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__, "ray", ray.__version__)' || exit 3
fi

# bench SUBCOMMAND ARGS... (a command line, not a function, so that `timeout` can run it)
bench() {
  BENCH=("$PY" benchmarks/gpu_bench.py "$@" --parts "$PARTS" --work "$WORK/work")
  if [ $DRY -eq 1 ]; then BENCH+=(--dry-run); fi
}
RLHF=("$PY" -c 'import sys; from rlhf.cli import main; sys.exit(main())')

bench matmul; step matmul 40 "${BENCH[@]}"
SAMPLING=("$PY" benchmarks/sampling.py --engine eager,static --out "$PARTS/sampling.json")
if [ $DRY -eq 1 ]; then SAMPLING+=(--model embedded:tiny-llama --batch 4 --new-tokens 8 --dtype fp32 --no-compile --repeats 1);
else SAMPLING+=(--model "$WORK/work/llama-1b-v32000" --batch 64 --new-tokens 256 --dtype bf16); fi
bench model; step model 40 "${BENCH[@]}"   # the 1.1B random-weight dir the next steps share (seconds on the GPU)
step sampling 130 "${SAMPLING[@]}"
bench sft --kernels liger; step sft 110 "${BENCH[@]}"
if [ $DRY -eq 1 ] || [[ " ${FAILED[*]:-} " == *" sft "* ]]; then
  bench sft --kernels hf; STEPS="$STEPS sft_hf"; step sft_hf 110 "${BENCH[@]}"
fi
bench ppo; step ppo 130 "${BENCH[@]}"
bench multirank; step multirank 120 "${BENCH[@]}"
SERVE=("$PY" benchmarks/serve_throughput.py --levels 64 --json "$PARTS/serve.json")
if [ $DRY -eq 1 ]; then SERVE+=(--help);  # the service itself is tested by tests/test_serve_*.py
else SERVE+=(--size llama-1b --device cuda --requests 1280 --baseline-requests 160 --cpus-per-replica 4); fi
step serve 90 "${SERVE[@]}"
bench overrides "$PIPELINE" --gpus "$GPUS"; step pipeline_overrides 30 "${BENCH[@]}"
if [ -f "$PARTS/overrides.txt" ] && [ $DRY -eq 0 ] && wanted pipeline; then
  mapfile -t OVERRIDES < "$PARTS/overrides.txt"
  log "pipeline $PIPELINE with: ${OVERRIDES[*]}"
  step pipeline $(( $(left) - 25 )) "${RLHF[@]}" run "$PIPELINE" --out "$WORK/pipeline" "${OVERRIDES[@]}"
  bench manifests "$WORK/pipeline" --pipeline "$PIPELINE"; STEPS="$STEPS manifests"; step manifests 15 "${BENCH[@]}"
fi

if [ $DRY -eq 1 ]; then REPORT="$WORK/gpu_check.json"; else REPORT="$ROOT/benchmarks/results/gpu_check.json"; fi
"$PY" benchmarks/gpu_bench.py report --parts "$PARTS" --out "$REPORT" --failed "${FAILED[@]}" || FAILED+=("report")
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$REPORT" "$OUT/" 2>/dev/null || true; fi
log "done in $(( $(date +%s) - START ))s; failed: ${FAILED[*]:-none}"
[ ${#FAILED[@]} -eq 0 ]
