#!/usr/bin/env bash
# The Clarity job side by side: `tessera bench clarity` (two jobs on the same warm models) and the
# same workload in PyTorch eager (bench/clarity_pytorch.py), on the same machine, one after the
# other, with the same threads; prints both reports and the ratios: against the same work, and
# against the work Refiners' MultiUpscaler does (the same plus its VAE statistics pass).
#
#   bench/compare.sh [SIZE] [SCALE] [THREADS] [STEPS]      # default: 256 2 2 18
#
# Needs a release build (cargo build --release -p tessera), an ONNX Runtime library
# (TESSERA_ORT_LIB or the data directory's runtime/), and a Python with torch, diffusers and
# transformers (PYTHON, default /root/fixture-venv/bin/python). The random models (about 5.8 GB)
# go to BENCH_DIR (default /dev/shm/tessera-bench, a RAM disk) and are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256}
scale=${2:-2}
threads=${3:-2}
steps=${4:-18}
python=${PYTHON:-/root/fixture-venv/bin/python}
dir=${BENCH_DIR:-/dev/shm/tessera-bench}
trap 'rm -rf "$dir"' EXIT

tessera_log=$(mktemp)
torch_log=$(mktemp)
target/release/tessera bench clarity --dir "$dir" --size "$size" --scale "$scale" \
  --runs 2 --threads "$threads" --steps "$steps" | tee "$tessera_log"
rm -rf "$dir"
"$python" bench/clarity_pytorch.py --size "$size" --scale "$scale" --threads "$threads" --steps "$steps" \
  --refiners-statistics | tee "$torch_log"

first=$(awk '/^job 1 /{print $(NF-1)}' "$tessera_log")
warm=$(awk '/^job 2 /{print $(NF-1)}' "$tessera_log")
torch_job=$(awk '/^job without load:/{print $4}' "$torch_log")
refiners_job=$(awk '/^job with Refiners/{print $6}' "$torch_log")
# "… 13.28 s each …": the seconds per evaluation, in both reports.
seconds_each='/^UNet \+ ControlNet:/{for (i=3;i<=NF;i++) if ($i ~ /^each/ && $(i-1)=="s") print $(i-2)}'
tessera_eval=$(awk "$seconds_each" "$tessera_log" | head -1)
torch_eval=$(awk "$seconds_each" "$torch_log" | head -1)
echo
echo "== ${size}² ×${scale}, ${threads} threads"
awk -v t="$torch_job" -v r="$refiners_job" -v w="$warm" -v f="$first" -v te="$tessera_eval" -v pe="$torch_eval" 'BEGIN {
  printf "PyTorch job (models built in memory, not counted): %.1f s\n", t
  printf "Tessera warm job: %.1f s → %.2f× faster\n", w, t / w
  printf "PyTorch job with Refiners'"'"' statistics pass (Refiners'"'"' MultiUpscaler runs it on every job): %.1f s → %.2f×\n", r, r / w
  printf "Tessera first job (compile and sessions included): %.1f s → %.2f×\n", f, t / f
  printf "UNet + ControlNet evaluation: Tessera %.2f s, PyTorch %.2f s → %.2f×\n", te, pe, pe / te
}'
