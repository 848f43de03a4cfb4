#!/usr/bin/env bash
# Builds test/native/engine_transfers_test.cc (the engine and the CPU backend under a counting
# op table, with AddressSanitizer + UBSan) and runs it on a tiny model with FlexiDepth and
# SkipLayer routers: every decode step must be one upload, compute ops, one download.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
srcs=$(node -p "require('./native/sources.json').filter(f => !f.startsWith('native/addon')).join(' ')")
# shellcheck disable=SC2086
g++ -std=c++17 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -pthread -Inative -Itest/native \
  test/native/engine_transfers_test.cc $srcs -ldl -o "$out/engine_transfers_test"
node -e "require('./dist/testing/index.js').writeTinyModel('$out/model', {layers: 2, flexidepth: {layers: [1]}, skiplayer: {mode: 'module', layers: [0]}})"
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1 "$out/engine_transfers_test" "$out/model"
