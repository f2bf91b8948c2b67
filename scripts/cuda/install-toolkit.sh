#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolkit from NVIDIA's PyPI wheels, for building the CUDA trainer on a
# machine with no GPU, no driver and no NVIDIA apt repository (e.g. the development VM):
#   nvcc, ptxas, cicc (NVVM), the headers and CCCL, and the cuBLAS, cuRAND, NVRTC and runtime
#   libraries, laid out as a toolkit (bin/, include/, lib64/), plus a link-time stub of the
#   driver library (libcuda.so), which only a machine with an NVIDIA driver has. The binary loads
#   the real driver's libcuda.so.1 where it runs.
# CUDA 13.0 because the GPU machines' driver (580) runs CUDA 13.0: candle JIT-compiles its
# kernels' PTX at run time, and a driver refuses PTX from a newer toolkit than its own.
# Usage: scripts/cuda/install-toolkit.sh [PREFIX]   (default /opt/cuda-13.0)
# Then: export CUDA_HOME=PREFIX PATH=PREFIX/bin:$PATH
set -euo pipefail
prefix=${1:-/opt/cuda-13.0}
wheels="$prefix/wheels"
mkdir -p "$wheels"
python3 -m pip install -q --no-deps --disable-pip-version-check --target "$wheels" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
cu="$wheels/nvidia/cu13"
for d in bin include nvvm; do ln -sfn "$cu/$d" "$prefix/$d"; done
mkdir -p "$prefix/lib64/stubs"
# The linker wants the unversioned names (libcublas.so); the wheels ship the sonames only.
for lib in "$cu"/lib/lib*.so.*; do
  name=$(basename "$lib")
  ln -sfn "$lib" "$prefix/lib64/$name"
  ln -sfn "$lib" "$prefix/lib64/${name%%.so.*}.so"
done
# The driver stub: every cu* entry point cuda.h declares, under the names the linker sees after
# cuda.h's versioning macros (cuCtxCreate -> cuCtxCreate_v2) and before them.
stub=$(mktemp -d)
{
  gcc -E -P -I"$cu/include" "$cu/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t'
  grep -oE '^[[:space:]]*CUresult CUDAAPI cu[A-Za-z0-9_]+' "$cu/include/cuda.h" | awk '{print $3}'
} | sort -u | awk '{print "void " $1 "(void) {}"}' >"$stub/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$prefix/lib64/stubs/libcuda.so" "$stub/cuda_stub.c"
rm -rf "$stub"
echo "CUDA $("$prefix/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') toolkit in $prefix"
echo "build with: CUDA_HOME=$prefix PATH=$prefix/bin:\$PATH CUDA_COMPUTE_CAP=90 cargo build --release --features cuda -p server"
