#!/usr/bin/env bash
# Builds, on a machine without a GPU, what scripts/check-cuda.sh runs on the GPU machine, so
# that nothing is built there: the CUDA build of `goodhart` (its `bench kernels` runs the checks
# of the trainer's `cuda_*` tests), stripped and gzipped into .device/ (git-ignored), with
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
# (A test binary of the trainer would be a build of its own: cargo unifies features per
# package selection, and `cargo test -p trainer` recompiles candle's CUDA kernels.)
cargo build --release --features cuda -p server
mkdir -p .device
strip -o .device/goodhart "$CARGO_TARGET_DIR/release/goodhart"
gzip -9 -f .device/goodhart
commit=$(git rev-parse HEAD)
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo " (with uncommitted changes)" || true)
echo "$commit$dirty; $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >.device/BUILT_FROM
ls -l .device
du -ch .device/*.gz | tail -n 1
