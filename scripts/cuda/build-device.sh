#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/check-cuda.sh runs on the GPU machine,
# so that nothing is built there: the CUDA build of `goodhart` and the trainer's test binary (the
# `cuda_*` kernel tests), stripped and gzipped into .device/ (git-ignored), with
# .device/BUILT_FROM naming the commit and the toolkit. Carry `.device` to the GPU machine.
#
# Needs a CUDA toolkit: scripts/cuda/install-toolkit.sh installs CUDA 13.0 from PyPI into
# /opt/cuda-13.0 (the GPU machines' driver, 580, runs CUDA 13.0). Kernels are compiled for
# CUDA_COMPUTE_CAP (default 90: H100/H200; the trainer's own kernels for 80 and 90 always).
# Builds in target-cuda/ (git-ignored), apart from the CPU build in target/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDA_HOME=${CUDA_HOME:-/opt/cuda-13.0}
export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "error: no nvcc in $CUDA_HOME: run scripts/cuda/install-toolkit.sh (or set CUDA_HOME)" >&2
  exit 1
fi
cargo build --release --features cuda -p server
tests=$(cargo test --release --features cuda -p trainer --lib --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])' | tail -n 1)
mkdir -p .device
for pair in "goodhart:$CARGO_TARGET_DIR/release/goodhart" "trainer-tests:$tests"; do
  name=${pair%%:*}
  strip -o ".device/$name" "${pair#*:}"
  gzip -9 -f ".device/$name"
done
commit=$(git rev-parse HEAD)
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo " (with uncommitted changes)" || true)
echo "$commit$dirty; $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >.device/BUILT_FROM
ls -l .device
du -ch .device/*.gz | tail -n 1
