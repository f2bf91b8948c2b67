#!/usr/bin/env bash
# Checks a CUDA machine, start to finish:
#   1. builds the CUDA trainer (`cargo build --release --features cuda`), unless GOODHART_BIN
#      names an already built `goodhart`;
#   2. one TR-DPO step on the CPU (float32) and on the GPU from the same weights and batch must
#      agree: within 1e-2 in float32, and the loss and gradients within 5e-2 in bfloat16 and
#      float16 (`goodhart bench device` exits non-zero otherwise); then times TR-DPO steps on
#      the GPU for the tiny, small and Pythia-160M shapes in each dtype;
#   3. trains a short toy-tree TR-DPO run on the GPU in bf16 with gradient checkpointing (SFT, exact
#      evaluation, checkpoints: the whole loop);
#   4. if python3 has torch with CUDA and transformers, times the same step in PyTorch on the same
#      GPU, for a side-by-side ratio.
# Usage: scripts/check-cuda.sh [OUT_DIR]   (default: ./cuda-check)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-cuda-check}
mkdir -p "$out"
bin=${GOODHART_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --features cuda -p server
  bin=target/release/goodhart
fi
# The binary links cuBLAS, cuRAND and the CUDA runtime. Where the loader cannot find them, use
# the CUDA toolkit's copies or those PyTorch's NVIDIA wheels installed.
missing() { ldd "$bin" | awk '/not found/ {print $1}'; }
if [ -n "$(missing)" ]; then
  dirs=$( (ls -d /usr/local/nvidia/lib64 /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib 2>/dev/null
           python3 -c 'import glob, os, site
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        print(os.path.dirname(lib))' 2>/dev/null) | sort -u | paste -sd:)
  export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -n "$(missing)" ]; then
    echo "error: $bin needs libraries the loader cannot find: $(missing | paste -sd' ')" >&2
    exit 1
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

echo "== CPU vs GPU, one TR-DPO step; GPU step times"
"$bin" bench device --device cuda --configs "${CONFIGS:-tiny,small,pythia-160m}" \
  --dtypes "${DTYPES:-float32,bfloat16,float16}" | tee "$out/bench-device.txt"

echo "== a toy-tree TR-DPO run trained on the GPU (bf16, gradient checkpointing)"
cat > "$out/toy-tr-dpo-cuda.toml" <<TOML
task = "toy-tree"
device = "cuda"
sync_ref_model = true
ref_model_mixup_alpha = 0.6
ref_model_sync_steps = 1
max_steps = 100
eval_steps = 25
logging_steps = 25
bf16 = true
gradient_checkpointing = true
TOML
GOODHART_CACHE_DIR="$out/cache" "$bin" train --config "$out/toy-tr-dpo-cuda.toml" --output-dir "$out/toy-run"
grep -c '"eval/gold_reward"' "$out/toy-run/metrics.jsonl" >/dev/null
tail -n 1 "$out/toy-run/metrics.jsonl"

if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
  echo "== the same step in PyTorch on the same GPU"
  python3 scripts/cuda/torch_trdpo_step.py --configs "${CONFIGS:-tiny,small,pythia-160m}" \
    --dtypes "${DTYPES:-float32,bfloat16,float16}" | tee "$out/torch.jsonl"
else
  echo "NOTE: no python3 with CUDA torch + transformers: PyTorch side skipped"
fi
echo "cuda check: OK"
