#!/usr/bin/env bash
# Builds test/native/leak_test.cc with AddressSanitizer (LeakSanitizer included) and runs it on a
# tiny model with FlexiDepth and SkipLayer routers and on a corrupt file. Exit 0 = no leak.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
srcs=$(node -p "require('./native/sources.json').filter(f => !f.startsWith('native/addon')).join(' ')")
# shellcheck disable=SC2086
g++ -std=c++17 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -pthread -Inative -Itest/native \
  test/native/leak_test.cc $srcs -ldl -o "$out/leak_test"
node -e "require('./dist/tinyModel.js').writeTinyModel('$out/model', {layers: 2, flexidepth: {layers: [1]}, skiplayer: {mode: 'module', layers: [0]}})"
head -c 3000 "$out/model/model.safetensors" > "$out/corrupt.safetensors"
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1 "$out/leak_test" "$out/model" "$out/corrupt.safetensors"
echo "leak test passed: no leaks reported"
