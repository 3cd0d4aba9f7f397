#!/usr/bin/env bash
# Tessera side by side with its peers, in one run, on the same machine, threads, input size and
# random SD 1.5-sized weights (the same shapes; each side draws its own numbers):
#
#  1. Refiners' own MultiUpscaler.upscale() (the library's real code, checked out into
#     .cache/refiners at a pinned commit and installed without dependencies into
#     .cache/refiners-deps) with an ESRGAN pre-upscale, next to `tessera upscale --preset
#     refiners` through a real daemon: the first job after `tessera serve` starts (with its
#     warm-up), a warm job, a re-run with a new seed, a preview of a region, the peak RSS;
#  2. the Clarity preset through the same daemon next to the same work in PyTorch eager
#     (bench/clarity_pytorch.py, same grid and evaluations).
#
#   bench/compare.sh [SIZE] [SCALE] [THREADS] [STEPS]      # default: 256 2 2 18
#
# Needs a release build with the benchmarks (cargo build --release -p tessera --features dev), an
# ONNX Runtime library (TESSERA_ORT_LIB), a Python with torch, diffusers and transformers
# (PYTHON), git, and the refiners repository (REFINERS_GIT: a URL or a local clone). The random
# models (about 5.8 GB each side) go to BENCH_DIR (default /dev/shm/tessera-bench, a RAM disk)
# and are removed at the end. CLARITY_RERUN=0 leaves out the Clarity preset's re-run (a quarter
# of an hour at 512²).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256}
scale=${2:-2}
threads=${3:-2}
steps=${4:-18}
python=${PYTHON:-python3}
dir=${BENCH_DIR:-/dev/shm/tessera-bench}
refiners_git=${REFINERS_GIT:-https://github.com/finegrain-ai/refiners}
refiners_commit=720a91a9e
tessera=target/release/tessera
data="$dir/tessera"
work="$dir/work"
socket="$dir/tessera.sock"
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  rm -rf "$dir"
}
if ! "$tessera" bench --help >/dev/null 2>&1; then
  echo "compare.sh: $tessera has no benchmarks (cargo build --release -p tessera --features dev)" >&2
  exit 2
fi
trap cleanup EXIT
mkdir -p "$work"
export TESSERA_DATA_DIR="$data" TESSERA_SOCKET="$socket"
echo "== machine: $(nproc) cores, load at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# Refiners, pinned, into ignored folders.
if [ ! -d .cache/refiners-deps/refiners ]; then
  rm -rf .cache/refiners
  git clone -q --no-checkout "$refiners_git" .cache/refiners
  git -C .cache/refiners checkout -q "$refiners_commit" -- src pyproject.toml LICENSE README.md
  git -C .cache/refiners reset -q "$refiners_commit"
  "$python" -m pip install -q --no-deps --target .cache/refiners-deps ./.cache/refiners
  "$python" -m pip install -q --target .cache/refiners-deps jaxtyping
fi

# The same input pictures on both sides: random noise (seed 1, as the Refiners script) for the
# Refiners comparison, and others so that no job takes another's pre-upscale from the cache.
"$python" - "$work" "$size" <<'EOF'
import sys
import numpy as np
from PIL import Image
out, size = sys.argv[1], int(sys.argv[2])
for seed in (1, 2, 3, 4):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(f"{out}/in{seed}.png")
EOF

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
job() { # name, then tessera upscale arguments: prints the name and the wall seconds
  local name=$1; shift
  local t0; t0=$(now)
  "$tessera" upscale --no-start "$@" > "$work/$name.log"
  local s; s=$(seconds "$t0" "$(now)")
  echo "$name $s $(cat "$work/$name.log")"
  eval "t_$name=$s"
}

# --- Tessera ---------------------------------------------------------------------------------
"$tessera" bench clarity --models-only --dir "$data"
refiners=(--preset refiners --scale "$scale" --steps "$steps")
clarity=(--preset clarity --scale "$scale" --steps "$steps"
  --prompt "masterpiece, best quality, highres"
  --negative-prompt "(worst quality, low quality, normal quality:2)")
t_start=$(now)
"$tessera" serve --threads "$threads" 2> "$work/serve.log" &
daemon=$!
until "$tessera" status > /dev/null 2>&1; do sleep 0.05; done
t_listening=$(seconds "$t_start" "$(now)")
job first_refiners "$work/in1.png" -o "$work/first.png" "${refiners[@]}"
t_first_total=$(seconds "$t_start" "$(now)")
warm_up=$("$tessera" status | sed -n 's/^warm-up: //p')
job warm_refiners "$work/in2.png" -o "$work/warm.png" "${refiners[@]}"
job rerun_refiners "$work/in2.png" -o "$work/rerun.png" "${refiners[@]}" --seed 7
half=$(awk -v s="$size" -v k="$scale" 'BEGIN { printf "%d", s * k / 2 }')
quarter=$(( half / 2 ))
job preview_refiners "$work/in2.png" -o "$work/preview.png" "${refiners[@]}" --seed 8 \
  --preview "$quarter,$quarter,$half,$half"
job warm_clarity "$work/in3.png" -o "$work/clarity.png" "${clarity[@]}"
t_rerun_clarity=""
if [ "${CLARITY_RERUN:-1}" != 0 ]; then
  job rerun_clarity "$work/in3.png" -o "$work/clarity-rerun.png" "${clarity[@]}" --seed 7
fi
tessera_peak=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$daemon/status")
"$tessera" stop > /dev/null
wait "$daemon" || true
daemon=""
rm -rf "$data"

# --- Refiners' MultiUpscaler -----------------------------------------------------------------
export PYTHONPATH="$PWD/.cache/refiners-deps${PYTHONPATH:+:$PYTHONPATH}"
"$python" bench/refiners_multi_upscaler.py --refiners .cache/refiners-deps write "$dir/refiners"
"$python" bench/refiners_multi_upscaler.py --refiners .cache/refiners-deps run "$dir/refiners" \
  --size "$size" --scale "$scale" --threads "$threads" --steps "$steps" --runs 2 \
  | tee "$work/refiners.log"
rm -rf "$dir/refiners"
r_first=$(awk '/^refiners job 1:/ { print $4 }' "$work/refiners.log")
r_warm=$(awk '/^refiners job 2:/ { print $4 }' "$work/refiners.log")
r_peak=$(awk '/^refiners peak RSS:/ { print $4 }' "$work/refiners.log")
r_load=$(awk '/^models loaded in/ { print $4 }' "$work/refiners.log")

# --- The same Clarity work in PyTorch eager --------------------------------------------------
"$python" bench/clarity_pytorch.py --size "$size" --scale "$scale" --threads "$threads" \
  --steps "$steps" | tee "$work/torch.log"
torch_job=$(awk '/^job without load:/ { print $4 }' "$work/torch.log")

echo
echo "== ${size}² ×${scale}, ${threads} threads, ${steps} steps; load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tessera serve listening after ${t_listening} s; warm-up: ${warm_up}"
awk -v first="$t_first_refiners" -v first_total="$t_first_total" -v warm="$t_warm_refiners" \
  -v rerun="$t_rerun_refiners" -v preview="$t_preview_refiners" -v rf="$r_first" -v rw="$r_warm" \
  -v rl="$r_load" -v tp="$tessera_peak" -v rp="$r_peak" -v half="$half" 'BEGIN {
  printf "Refiners preset                     | Tessera           | Refiners MultiUpscaler | ratio\n"
  printf "warm job                            | %6.1f s          | %6.1f s (job 2)       | %.2f×\n", warm, rw, rw / warm
  printf "first job after start, warm-up incl.| %6.1f s (%5.1f s since serve started) | %6.1f s (job 1; +%.1f s load) | %.2f×\n", first, first_total, rf, rl, (rf + rl) / first_total
  printf "re-run with a new seed              | %6.1f s (%.0f %% of warm) | %6.1f s (no cache)  | %.2f×\n", rerun, 100 * rerun / warm, rw, rw / rerun
  printf "preview of a %d² region              | %6.1f s          | —                      |\n", half, preview
  printf "peak RSS                            | %6d MiB        | %6d MiB             | %.2f×\n", tp, rp, rp / tp
}'
awk -v warm="$t_warm_clarity" -v rerun="$t_rerun_clarity" -v torch="$torch_job" 'BEGIN {
  printf "Clarity preset: Tessera warm %.1f s; PyTorch same work %.1f s → %.2f×", warm, torch, torch / warm
  if (rerun != "") printf "; re-run %.1f s (%.2f×)", rerun, torch / rerun
  printf "\n"
}'
