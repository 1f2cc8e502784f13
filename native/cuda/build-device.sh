#!/usr/bin/env bash
# Builds lowbit.node with the CUDA backend using plain CMake (no cmake-js: nothing is downloaded), for
# machines without network such as the GPU host. Node's C headers come from the node-api-headers package,
# the C++ wrapper from node-addon-api; pass their folders when node_modules is not there.
#
#   native/cuda/build-device.sh [NODE_API_HEADERS_INCLUDE_DIR [NODE_ADDON_API_DIR]]
#   CUDA_ARCHS="90" native/cuda/build-device.sh ...   # fewer architectures: faster build (default 80;86;89;90)
#
# Leaves the addon in build/Release/lowbit.node, where node-gyp-build (lib/native/addon.ts) finds it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
napi=${1:-${NODE_API_HEADERS_DIR:-$(cd "$root" && node -p "require('node-api-headers').include_dir")}}
naa=${2:-${NODE_ADDON_API_DIR:-$(cd "$root" && node -p "require('node-addon-api').include_dir")}}
bdir=${LOWBIT_CUDA_BUILD_DIR:-$root/build-cuda}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$root" -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA=ON \
  -DNODE_API_HEADERS_DIR="$napi" -DNODE_ADDON_API_DIR="$naa" \
  ${CUDA_ARCHS:+-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS"}
cmake --build "$bdir" -j "$(nproc)"
mkdir -p "$root/build/Release"
cp "$bdir/lowbit.node" "$root/build/Release/lowbit.node"
echo "built $root/build/Release/lowbit.node"
