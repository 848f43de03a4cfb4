#!/usr/bin/env bash
# Builds llama.cpp's own llama-bench (CPU only, -march=native as llama.cpp builds by default) from
# the llama.cpp sources node-llama-cpp ships as llama/gitRelease.bundle, for the side-by-side
# figures of `npm run bench:overhead` (which uses it when it is there). Nothing here is a
# dependency of the package, and nothing is committed: the sources and the build live in the
# git-ignored scratch folder of `npm run bench:peers` (default bench/.peers), which installs
# node-llama-cpp there (NODE_LLAMA_CPP_SKIP_DOWNLOAD=true) when it is missing.
#   bash scripts/build-llama-bench.sh [SCRATCH]    prints the path of llama-bench
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
scratch="${1:-$root/bench/.peers}"
pkg="$scratch/node_modules/node-llama-cpp"
if [ ! -f "$pkg/package.json" ]; then
  mkdir -p "$scratch"
  [ -f "$scratch/package.json" ] || echo '{ "name": "depthgate-bench-peers", "private": true }' >"$scratch/package.json"
  echo "installing node-llama-cpp@3 into $scratch (its sources bundle is what gets built) ..." >&2
  NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$scratch" --no-audit --no-fund node-llama-cpp@3 >&2
fi
bundle="$pkg/llama/gitRelease.bundle"
[ -f "$bundle" ] || {
  echo "build-llama-bench: $bundle is missing (node-llama-cpp changed how it ships llama.cpp?)" >&2
  exit 1
}
src="$scratch/llama.cpp"
if [ ! -d "$src/.git" ]; then
  rm -rf "$src"
  git clone -q "$bundle" "$src" >&2
fi
exe="$src/build/bin/llama-bench"
if [ ! -x "$exe" ]; then
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
  cmake --build "$src/build" --target llama-bench -j "$(nproc)" >&2
fi
[ -x "$exe" ] || {
  echo "build-llama-bench: the build finished without $exe" >&2
  exit 1
}
echo "$exe"
