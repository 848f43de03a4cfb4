#!/usr/bin/env bash
# Coverage-guided fuzzing of the native parsers with libFuzzer + AddressSanitizer + UBSan.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]        (default 60)
#   FUZZ_TARGETS="fuzz_safetensors fuzz_model" scripts/fuzz.sh 3600   (some targets only)
# A run of 300 s per target or more (or any run with FUZZ_SUMMARY=FILE) writes a short summary,
# by default test/fuzz/runs/<UTC time>-<seconds>s.txt, to be committed: the record of what ran.
# Needs clang (Debian: apt-get install clang). Seeds come from the tiny test models; crashes are
# written to test/fuzz/crashes/ and kept as regression inputs (test/fuzz/regressions/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install clang)"; exit 3; }
out="${FUZZ_OUT:-$(mktemp -d)}"
mkdir -p "$out" test/fuzz/crashes
flags=(-std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Inative -Itest/native -Itest/fuzz)
common=(native/json.cc native/mapguard.cc native/safetensors.cc native/gguf.cc native/gguf_model.cc native/model.cc native/cpu/convert.cc native/cpu/kquant.cc native/cpu/features.cc native/weight_arena.cc native/threadpool.cc)
clang++ "${flags[@]}" test/fuzz/fuzz_json.cc native/json.cc -o "$out/fuzz_json"
clang++ "${flags[@]}" test/fuzz/fuzz_safetensors.cc "${common[@]}" -o "$out/fuzz_safetensors"
clang++ "${flags[@]}" test/fuzz/fuzz_model.cc "${common[@]}" -o "$out/fuzz_model"
clang++ "${flags[@]}" test/fuzz/fuzz_gguf.cc "${common[@]}" -o "$out/fuzz_gguf"

# Seed corpora: real tiny checkpoints (with routers) and their headers.
seeds="$out/seeds"
mkdir -p "$seeds/st" "$seeds/json" "$seeds/gguf"
for variant in "" "--dtype bf16 --tied" "--arch qwen2 --dtype f16" "--shards 2"; do
  d="$out/model-$RANDOM"
  # shellcheck disable=SC2086
  node scripts/make-tiny-model.js "$d" --layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 128 $variant >/dev/null
  for f in "$d"/*.safetensors; do
    cp "$f" "$seeds/st/$(basename "$d")-$(basename "$f")"
    n=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    head -c "$((n + 8))" "$f" | tail -c "$n" > "$seeds/json/$(basename "$d")-$(basename "$f").json"
  done
  # The same checkpoint as GGUF (llama.cpp's layout: src/testing/ggufConvert.ts).
  node -e "require('./dist/testing/index.js').convertToGguf(process.argv[1], process.argv[2])" "$d" "$seeds/gguf/$(basename "$d").gguf"
done
cp test/fuzz/regressions/* "$seeds/st/" 2>/dev/null || true
cp test/fuzz/regressions/gguf/* "$seeds/gguf/" 2>/dev/null || true  # inputs that once failed fuzz_gguf

summary="${FUZZ_SUMMARY:-}"
if [ -z "$summary" ] && [ "$secs" -ge 300 ]; then summary="test/fuzz/runs/$(date -u +%Y%m%dT%H%MZ)-${secs}s.txt"; fi
if [ -n "$summary" ]; then
  mkdir -p "$(dirname "$summary")"
  { echo "scripts/fuzz.sh $secs  (FUZZ_TARGETS=${FUZZ_TARGETS:-all})"
    echo "started $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)"
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(clang++ --version | head -1)"
  } > "$summary"
fi

status=0
for target in ${FUZZ_TARGETS:-fuzz_json fuzz_safetensors fuzz_model fuzz_gguf}; do
  corpus="$out/corpus-$target"
  mkdir -p "$corpus"
  seed="$seeds/st"
  [ "$target" = fuzz_json ] && seed="$seeds/json"
  [ "$target" = fuzz_gguf ] && seed="$seeds/gguf"
  echo "== $target: ${secs}s"
  result="no crash, no sanitizer report"
  if ! "$out/$target" "$corpus" "$seed" -max_total_time="$secs" -max_len=1048576 -rss_limit_mb=2048 \
       -artifact_prefix="test/fuzz/crashes/$target-" -print_final_stats=1 2>"$out/$target.log"; then
    status=1
    result="FOUND A CRASH (see test/fuzz/crashes/)"
    echo "fuzz: $target FOUND A CRASH (see test/fuzz/crashes/)"
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov: [0-9]+" "$out/$target.log" | tail -3 || true
  if [ -n "$summary" ]; then
    { echo "== $target: ${secs}s, $result"
      grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$out/$target.log" || true
      grep -E "cov: [0-9]+" "$out/$target.log" | tail -1 || true
    } >> "$summary"
  fi
done
if [ -n "$summary" ]; then echo "fuzz: summary in $summary"; fi
exit $status
