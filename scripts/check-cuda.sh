#!/usr/bin/env bash
# Checks a CUDA machine, start to finish, in one go (estimated at about 5 minutes on an H200 with
# a carried binary; nothing is built there):
#   0. takes the CUDA build of `goodhart` from .device/ (made by scripts/cuda/build-device.sh on
#      a machine without a GPU), else GOODHART_BIN, else builds it (`cargo build --release
#      --features cuda`);
#   1. the fused CUDA kernels against candle's composed ops on the GPU, values and gradients
#      (`goodhart bench kernels`: the checks of the trainer's `cuda_*` tests; 1e-5 relative in
#      float32, the half dtype's resolution in bf16/fp16);
#   2. one TR-DPO step on the CPU (float32) and on the GPU from the same weights and batch, in
#      float32, bf16 and fp16 (`goodhart bench device` exits non-zero outside tolerance); then
#      TR-DPO step times for the tiny, small and Pythia-160M shapes in each dtype, and Pythia-160M
#      again with GOODHART_FUSED_OPS=0 (candle's composed ops) to show what the kernels buy;
#   3. one evaluation (64 prompts x 64 new tokens) through the trainer's sampler and through
#      candle-transformers, timed both ways (`goodhart bench eval`);
#   4. the memory plan of TR-DPO on Pythia-1.4B and -2.8B (bf16, gradient checkpointing) and, for
#      each that fits this GPU, 20 timed steps with tokens/s and peak GPU memory (`bench scale`);
#   5. a short toy-tree TR-DPO run trained on the GPU in bf16 with gradient checkpointing;
#   6. if python3 has torch with CUDA and transformers: the same steps in PyTorch on the same GPU
#      (autocast in each dtype; Pythia-1.4B / -2.8B in bf16 with gradient checkpointing where they
#      fit), for side-by-side ratios. Without PyTorch the Goodhart side still runs.
# DEVICE=cpu runs the same sequence on the CPU with small settings (to check the script itself).
# Usage: scripts/check-cuda.sh [OUT_DIR]   (default: ./cuda-check; at most 7 files are written there)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-cuda-check}
mkdir -p "$out"
device=${DEVICE:-cuda}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
stamp() { echo "== [$((SECONDS - started)) s] $*"; }

bin=${GOODHART_BIN:-}
if [ -z "$bin" ] && [ -f .device/goodhart.gz ]; then
  gunzip -c .device/goodhart.gz >"$work/goodhart" && chmod +x "$work/goodhart" && bin=$work/goodhart
  echo "carried build: $(cat .device/BUILT_FROM 2>/dev/null || echo '?')"
fi
if [ -z "$bin" ]; then
  cargo build --release --features cuda -p server
  bin=target/release/goodhart
fi

# The binaries link cuBLAS, cuRAND, NVRTC and the CUDA runtime. Where the loader cannot find
# them, use the CUDA toolkit's copies or those PyTorch's NVIDIA wheels installed.
missing() { ldd "$1" | awk '/not found/ {print $1}'; }
if [ "$device" != cpu ] && [ -n "$(missing "$bin")" ]; then
  dirs=$( (ls -d /usr/local/nvidia/lib64 /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib 2>/dev/null
           python3 -c 'import glob, os, site
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        print(os.path.dirname(lib))' 2>/dev/null) | sort -u | paste -sd:)
  export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -n "$(missing "$bin")" ]; then
    echo "error: $bin needs libraries the loader cannot find: $(missing "$bin" | paste -sd' ')" >&2
    exit 1
  fi
fi
if [ "$device" = cpu ]; then
  echo "cpu (DEVICE=cpu: the script's own check, small settings)" | tee "$out/gpu.txt"
  steps=(--warmup 1 --steps 2); configs=${CONFIGS:-tiny}; eval_args=(--config tiny --prompts 8 --new-tokens 8 --repeats 1)
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
  steps=(--warmup 5 --steps 30); configs=${CONFIGS:-tiny,small,pythia-160m}; eval_args=(--config small)
fi
dtypes=${DTYPES:-float32,bfloat16,float16}
status=0
# Runs a command, its output shown and appended to a file; a failure is remembered, not fatal.
log() {
  local file=$1
  shift
  if "$@" 2>&1 | tee -a "$file"; then :; else
    echo "FAILED: $*" | tee -a "$file"
    status=1
  fi
}

stamp "1. fused CUDA kernels against the composed ops (values and gradients)"
log "$out/kernel-checks.txt" "$bin" bench kernels --device "$device"

stamp "2. CPU vs GPU, one TR-DPO step in each dtype; GPU step times, fused and composed"
log "$out/bench-device.txt" "$bin" bench device --device "$device" --configs "$configs" --dtypes "$dtypes" "${steps[@]}"
echo "-- GOODHART_FUSED_OPS=0 (candle's composed ops, for comparison)" | tee -a "$out/bench-device.txt"
log "$out/bench-device.txt" env GOODHART_FUSED_OPS=0 "$bin" bench device --device "$device" --configs "${configs##*,}" \
  --dtypes float32,bfloat16 "${steps[@]}"

stamp "3. one evaluation, trainer's sampler vs candle-transformers"
for dtype in float32 bfloat16; do
  log "$out/bench-eval.txt" "$bin" bench eval --device "$device" "${eval_args[@]}" --dtype "$dtype"
done

stamp "4. Pythia-1.4B / -2.8B: memory plan, and 20 TR-DPO steps of each that fits"
if [ "$device" = cpu ]; then scale=(--plan-only); else scale=(--warmup 3 --steps 20); fi
log "$out/bench-scale.txt" "$bin" bench scale --device "$device" "${scale[@]}"

stamp "5. a toy-tree TR-DPO run trained on the $device (bf16, gradient checkpointing)"
cat >"$work/toy.toml" <<TOML
task = "toy-tree"
device = "$device"
sync_ref_model = true
ref_model_mixup_alpha = 0.6
ref_model_sync_steps = 1
max_steps = ${TOY_STEPS:-100}
eval_steps = 25
logging_steps = 25
bf16 = true
gradient_checkpointing = true
TOML
log "$work/toy.log" env GOODHART_CACHE_DIR="$work/cache" "$bin" train --config "$work/toy.toml" --output-dir "$work/toy-run"
if grep -q '"eval/gold_reward"' "$work/toy-run/metrics.jsonl" 2>/dev/null; then
  tail -n 1 "$work/toy-run/metrics.jsonl"
else
  echo "FAILED: the toy run wrote no evaluation"
  status=1
fi

if [ "$device" != cpu ] && python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
  stamp "6. the same steps in PyTorch on the same GPU"
  log "$out/torch.jsonl" python3 scripts/cuda/torch_trdpo_step.py --configs "$configs" --dtypes "$dtypes"
  log "$out/torch.jsonl" python3 scripts/cuda/torch_trdpo_step.py --configs pythia-1.4b,pythia-2.8b --dtypes bfloat16 \
    --gradient-checkpointing --keep-initial --warmup 3 --steps 20
else
  stamp "6. NOTE: no python3 with CUDA torch + transformers (or DEVICE=cpu): PyTorch side skipped"
fi
stamp "done"
if [ "$status" -ne 0 ]; then
  echo "cuda check: FAILED (see above)"
  exit 1
fi
echo "cuda check: OK"
