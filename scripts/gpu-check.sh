#!/usr/bin/env bash
# The one-call GPU check: everything the CUDA backend must show on a GPU, in one command that
# writes what it measured into $OUT, on a machine with one H100/H200, CUDA 13, cmake, PyTorch and
# transformers but no Node.js and no network.
#
#   bash scripts/gpu-check.sh --prepare     here: writes .gpu-bundle/ (what must travel beside the
#                                            repository: node xz-compressed, the built addon and
#                                            dist/, node's runtime modules, the CUDA library built
#                                            here, the op harness binary, the compiled node
#                                            scripts) and checks the size of all that would travel
#   DEPTHGATE_REQUIRE_GPU=1 bash scripts/gpu-check.sh
#                                            there, with .gpu-bundle carried and $OUT set
#   bash scripts/gpu-check.sh --dry-run [OUT] here: prepares, then runs every part that needs no
#                                            GPU (the node scripts against the CPU backend, the
#                                            python scripts' self-tests and import checks)
#
# Parts, in order, each under its own time limit and inside one overall budget
# ($DG_GPU_CHECK_BUDGET, default 420 s): node, env, cuda (the carried library, or a cmake build
# there when it cannot load), ops (the op harness, CPU against CUDA), engine (engine parity for
# every policy and KV dtype), hf (transformers against depthgate), memcheck (compute-sanitizer on a
# short run and a quick op harness), bench-torch (ceilings, random 1B/8B checkpoints, the peers),
# bench-depthgate (decode against the floor, skipping, FlexiDepth, batches), bench-ops (each op
# against the ceilings), then summarize. A part that fails or runs out of time is recorded and the
# others still run. $OUT gets at most 8 files, each under 16 MiB: summary.json, bench.json,
# ops-parity.json, engine-parity.json, hf-parity.json, memcheck.txt, env.txt, log.txt.
#
# Environment: DG_BUNDLE (bundle folder, default .gpu-bundle), DG_NO_CUDA_BUILD=1 (prepare
# without building the CUDA library), DG_CUDA_ARCHS (default 90-real), DG_XZ_LEVEL (default 6),
# DG_GPU_CHECK_BUDGET (seconds), DG_SKIP_PREPARE=1 (dry run with the bundle as it is),
# DG_GPU_CHECK_BREAK=PART (that part fails at once: for the test of failure recording),
# DG_GPU_CHECK_PARTS=ops,engine,... (run only those parts, with node and env: a second call).
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 1
export BUNDLE="${DG_BUNDLE:-$ROOT/.gpu-bundle}"
MAX_TRAVEL=$((64 * 1024 * 1024))
export PATH="$PATH:/usr/local/cuda/bin"

say() { echo "[gpu-check $(date -u +%H:%M:%S)] $*"; }

# ---- prepare (here) -------------------------------------------------------------------------

prepare() {
  local app="$BUNDLE/app" status=0
  mkdir -p "$app/build/Release" "$BUNDLE/bin" "$BUNDLE/scripts" "$app/node_modules/@huggingface"
  say "prepare: TypeScript (dist/)"
  npx tsc -p tsconfig.json || return 1
  if [ ! -f build/Release/depthgate.node ] || [ -n "$(find native -newer build/Release/depthgate.node \( -name '*.cc' -o -name '*.h' \) | head -1)" ]; then
    say "prepare: the addon is missing or older than native/: npm run build:gyp"
    npm run build:gyp -- -j "$(nproc)" >/dev/null || return 1
  fi
  rm -rf "$app/dist" && cp -r dist "$app/dist" && cp package.json "$app/" && cp build/Release/depthgate.node "$app/build/Release/"
  for m in @huggingface/jinja @huggingface/tokenizers node-gyp-build; do
    rm -rf "$app/node_modules/$m" && cp -r "node_modules/$m" "$app/node_modules/$m" || return 1
  done
  local cuda="not built (DG_NO_CUDA_BUILD=1): the check builds it there with cmake"
  rm -f "$app/build/Release/libdepthgate_cuda.so" "$app/build/Release/libdepthgate_cuda.so.xz"
  if [ -z "${DG_NO_CUDA_BUILD:-}" ]; then
    say "prepare: the CUDA library (cmake, nvcc, ${DG_CUDA_ARCHS:-90-real})"
    if cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DDEPTHGATE_CUDA=ON -DDEPTHGATE_CUDA_ONLY=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${DG_CUDA_ARCHS:-90-real}" >build-cuda.log 2>&1 &&
      cmake --build build-cuda -j "$(nproc)" >>build-cuda.log 2>&1; then
      # Compressed: its fat binary is large (tens of MB for several architectures) and the
      # 64 MiB that may travel are shared with the repository and node.
      xz -T0 -6 -c build-cuda/libdepthgate_cuda.so >"$app/build/Release/libdepthgate_cuda.so.xz" || return 1
      cuda="built here ($(nvcc --version | tail -1), ${DG_CUDA_ARCHS:-90-real}), $(stat -c %s build-cuda/libdepthgate_cuda.so) bytes, $(stat -c %s "$app/build/Release/libdepthgate_cuda.so.xz") xz-compressed"
    else
      cuda="the build failed here (build-cuda.log: $(grep -m1 -i error build-cuda.log | tr -d '"\\' | cut -c1-200)); the check tries again there"
      say "prepare: CUDA library: $cuda"
    fi
    rm -f build-cuda.log
  fi
  say "prepare: the op harness"
  bash scripts/test-ops-parity.sh --build-only "$BUNDLE/bin/ops_parity_test" || return 1
  say "prepare: the node scripts (scripts/gpu/*.ts)"
  npx tsc -p scripts/gpu/tsconfig.json --outDir "$BUNDLE/scripts" || return 1
  local node stamp level="${DG_XZ_LEVEL:-6}"
  node="$(node -p process.execPath)"
  stamp="$(stat -c '%s %Y' "$node") $(node --version) xz-$level"
  if [ ! -f "$BUNDLE/node.xz" ] || [ "$(cat "$BUNDLE/node.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "prepare: compressing $node with xz -$level"
    xz -T0 "-$level" -c "$node" >"$BUNDLE/node.xz.tmp" && mv "$BUNDLE/node.xz.tmp" "$BUNDLE/node.xz" && echo "$stamp" >"$BUNDLE/node.stamp" || return 1
  fi
  # What would travel: the tracked files, untracked files git does not ignore, and the bundle.
  local tracked untracked bundle total
  tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  bundle=$(du -sb "$BUNDLE" | cut -f1)
  total=$((tracked + untracked + bundle))
  local commit
  commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!.gpu-bundle' 2>/dev/null || echo '+changes')"
  cat >"$BUNDLE/manifest.json" <<EOF
{"commit": "$commit", "prepared": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "node": "$(node --version)", "xzLevel": $level,
 "cudaLibrary": "$cuda", "bundleBytes": $bundle, "trackedBytes": $tracked, "untrackedBytes": $untracked,
 "travelBytes": $total, "travelLimitBytes": $MAX_TRAVEL}
EOF
  say "prepare: bundle $BUNDLE: $(numfmt --to=iec "$bundle") (node.xz $(numfmt --to=iec "$(stat -c %s "$BUNDLE/node.xz")")); with the repository's files $(numfmt --to=iec "$total") would travel (limit 64 MiB)"
  say "prepare: CUDA library: $cuda"
  if [ "$total" -gt "$MAX_TRAVEL" ]; then
    say "prepare: FAILED: $total bytes would travel, over the 64 MiB limit"
    status=1
  fi
  return $status
}

# ---- the parts (each runs as `bash gpu-check.sh --part NAME` under its own time limit) --------

unxz_to() {  # unxz_to FILE.xz OUT: xz, or python's lzma where xz is missing
  xz -dc "$1" >"$2" 2>/dev/null ||
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
}

part_node() {
  unxz_to "$BUNDLE/node.xz" "$W/node" || return 1
  local lib="$DEPTHGATE_APP/build/Release/libdepthgate_cuda.so"
  if [ -f "$lib.xz" ]; then
    unxz_to "$lib.xz" "$W/libdepthgate_cuda.so" || return 1
    export DEPTHGATE_CUDA_LIB="$W/libdepthgate_cuda.so"
    echo "export DEPTHGATE_CUDA_LIB=$DEPTHGATE_CUDA_LIB" >>"$W/env.sh"
  fi
  chmod +x "$W/node" && "$W/node" --version && "$W/node" -e "const i = require(process.env.DEPTHGATE_APP + '/dist/index.js').getBuildInfo(); console.log(JSON.stringify({cpuKernels: i.cpuKernels, cuda: i.cuda}))"
}

part_env() {
  {
    echo "== date"; date -u
    echo "== bundle"; cat "$BUNDLE/manifest.json"
    echo "== uname"; uname -a
    echo "== cpu"; nproc; grep -m1 'model name' /proc/cpuinfo; free -g 2>/dev/null
    echo "== disk"; df -h /tmp /dev/shm 2>/dev/null
    echo "== nvidia-smi"; nvidia-smi 2>&1 | head -30
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,power.limit,persistence_mode --format=csv 2>&1
    echo "== nvcc"; nvcc --version 2>&1 | tail -2
    echo "== compute-sanitizer"; compute-sanitizer --version 2>&1 | head -2
    echo "== cmake / g++"; cmake --version 2>&1 | head -1; g++ --version 2>&1 | head -1
    echo "== python"; python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1 | tail -1
    echo "== node"; "$W/node" --version 2>&1
  } >"$OUT/env.txt" 2>&1
  return 0
}

probe_cuda() {  # exit 0: usable; 3: the library loads but no GPU is usable; 4: the library does not load
  "$W/node" -e "const c = require(process.env.DEPTHGATE_APP + '/dist/index.js').getBuildInfo().cuda; console.log(JSON.stringify(c)); process.exit(c.available ? 0 : c.compiled ? 3 : 4)"
}

part_cuda() {
  local rc=4
  if [ -f "${DEPTHGATE_CUDA_LIB:-}" ]; then
    probe_cuda
    rc=$?
    [ $rc -eq 0 ] && { echo "the carried CUDA library works"; return 0; }
    # A library that loads but sees no usable GPU would not do better rebuilt: that is the machine.
    [ $rc -eq 3 ] && { echo "the CUDA library loads but no GPU is usable"; return 3; }
  fi
  echo "the carried CUDA library is missing or does not load: building it here"
  local b="$W/build-cuda"
  cmake -S "$ROOT" -B "$b" -DCMAKE_BUILD_TYPE=Release -DDEPTHGATE_CUDA=ON -DDEPTHGATE_CUDA_ONLY=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${DG_CUDA_ARCHS:-90-real}" && cmake --build "$b" -j "$(nproc)" || return 1
  echo "export DEPTHGATE_CUDA_LIB=$b/libdepthgate_cuda.so" >>"$W/env.sh"
  DEPTHGATE_CUDA_LIB="$b/libdepthgate_cuda.so" probe_cuda
}

harness() {  # the carried op harness, or one built here when it does not run
  if [ ! -x "$W/ops_parity_test" ]; then
    "$BUNDLE/bin/ops_parity_test" --no-such-flag >/dev/null 2>&1
    if [ $? -eq 64 ]; then
      cp "$BUNDLE/bin/ops_parity_test" "$W/ops_parity_test"
    else
      echo "the carried op harness does not run here: building it"
      DEPTHGATE_PARITY_COMPILE_ALL=1 bash "$ROOT/scripts/test-ops-parity.sh" --build-only "$W/ops_parity_test" >&2 || return 1
    fi
  fi
  "$W/ops_parity_test" "$@"
}

part_ops() {
  if [ "$DRY" = 1 ]; then harness --b cpu --quick --json "$OUT/ops-parity.json"
  else DEPTHGATE_REQUIRE_GPU=1 harness --b cuda --json "$OUT/ops-parity.json"; fi
}

part_engine() {
  "$W/node" "$BUNDLE/scripts/engineParity.js" --b "$BACKEND" --out "$OUT/engine-parity.json" --tmp "$W" $([ "$DRY" = 1 ] && echo --quick)
}

part_hf() {
  "$W/node" "$BUNDLE/scripts/hfDump.js" --dir "$W/hf" --b "$BACKEND" || return 1
  python3 "$ROOT/scripts/gpu/hf_parity.py" "$W/hf" --out "$OUT/hf-parity.json" $([ "$DRY" = 1 ] && echo --self-test)
}

part_memcheck() {
  local cs rc=0
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  {
    echo "== compute-sanitizer memcheck: node shortRun.js (every policy, prefill, decode, sampling, batching)"
    "$cs" --tool memcheck --error-exitcode 9 --print-limit 100 "$W/node" "$BUNDLE/scripts/shortRun.js" --b cuda --dir "$W"
    echo "exit status $?"
    echo "== compute-sanitizer memcheck: ops_parity_test --quick (odd shapes, row counts 0 and < max)"
    harness --version >/dev/null 2>&1  # make sure the harness is in place before the sanitizer starts it
    DEPTHGATE_REQUIRE_GPU=1 "$cs" --tool memcheck --error-exitcode 9 --print-limit 100 "$W/ops_parity_test" --b cuda --quick \
      --only matmul,gateUp,attention,kvWrite,rope,compact,routing,sample --json "$W/ops-memcheck.json"
    echo "exit status $?"
  } >"$OUT/memcheck.txt" 2>&1
  grep -q "^exit status [^0]" "$OUT/memcheck.txt" && rc=1
  tail -5 "$OUT/memcheck.txt"
  return $rc
}

part_bench_torch() {
  local shm avail
  avail=$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)
  # The checkpoints (about 19 GB) go to memory when /dev/shm has room, else to disk.
  if [ -n "$avail" ] && [ "$avail" -gt $((30 * 1024 * 1024 * 1024)) ]; then shm=/dev/shm/dg-bench; else shm="$W/models"; fi
  echo "export DG_MODELS=$shm" >>"$W/env.sh"
  if [ "$DRY" = 1 ]; then
    "$W/node" -e "require(process.env.DEPTHGATE_APP + '/dist/testing/index.js').writeTinyModel('$W/tok', {layers: 1, seed: 1})" || return 1
    python3 "$ROOT/scripts/gpu/bench_torch.py" --self-test --work "$shm" --tokenizer-from "$W/tok" --out "$W/bench-torch.json"
  else
    "$W/node" -e "require(process.env.DEPTHGATE_APP + '/dist/testing/index.js').writeTinyModel('$W/tok', {layers: 1, vocabSize: 128256, seed: 1})" || return 1
    PYTHONUNBUFFERED=1 python3 "$ROOT/scripts/gpu/bench_torch.py" --work "$shm" --tokenizer-from "$W/tok" --out "$W/bench-torch.json"
  fi
}

part_bench_depthgate() {
  # Dry run: bench_torch's self-test wrote tiny checkpoints in the layout of the real ones.
  local models="$W/bench-torch.json"
  [ -f "$models" ] || { echo "no checkpoints: bench_torch wrote no $models"; return 1; }
  "$W/node" "$BUNDLE/scripts/benchDecode.js" --models "$models" --out "$W/bench-depthgate.json" --b "$BACKEND" \
    --steps "$([ "$DRY" = 1 ] && echo 8 || echo 48)" --budget "$((PART_LIMIT - 15))"
}

part_bench_ops() {
  if [ "$DRY" = 1 ]; then harness --b cpu --quick --bench "$W/ops-bench.json"
  else DEPTHGATE_REQUIRE_GPU=1 harness --b cuda --bench "$W/ops-bench.json"; fi
}

part_python_checks() {  # syntax of every python script, and their imports: stdlib here, the rest on the GPU machine
  python3 - "$ROOT"/scripts/gpu/*.py <<'EOF'
import ast, importlib.util, sys
on_gpu_machine = {"torch", "transformers", "safetensors", "numpy"}
bad = 0
for path in sys.argv[1:]:
    tree = ast.parse(open(path).read(), path)
    compile(tree, path, "exec")
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    for name in sorted(names):
        if name in on_gpu_machine:
            continue
        if importlib.util.find_spec(name) is None:
            print(f"{path}: imports {name}, which is neither here nor on the GPU machine's list")
            bad += 1
    print(f"{path}: compiles; imports {sorted(names)}")
sys.exit(1 if bad else 0)
EOF
}

# ---- the check ------------------------------------------------------------------------------

record() {  # record PART STATUS RC SECONDS NOTE
  local note="${5//\"/\'}"
  printf '{"part": "%s", "status": "%s", "rc": %s, "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" "${note//\\/}" >>"$W/parts.jsonl"
  say "$1: $2 (${4} s)${5:+ - $5}"
}

run_part() {  # run_part NAME LIMIT_SECONDS [skip reason]
  local name="$1" limit="$2" left t0 rc status note=""
  left=$((DEADLINE - $(date +%s) - 15))
  if [ -n "${3:-}" ]; then record "$name" skipped 0 0 "$3"; return; fi
  if [ -n "${DG_GPU_CHECK_PARTS:-}" ] && [[ ",$DG_GPU_CHECK_PARTS,node,env," != *",$name,"* ]]; then
    record "$name" skipped 0 0 "not in DG_GPU_CHECK_PARTS"
    return
  fi
  if [ "$left" -lt 10 ]; then record "$name" skipped 0 0 "the check's time budget ran out"; return; fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "==== $name (limit ${limit} s)" >>"$LOG"
  t0=$(date +%s.%N)
  PART_LIMIT="$limit" timeout --kill-after=10 "$limit" bash "$SELF" --part "$name" >>"$LOG" 2>&1
  rc=$?
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout note="stopped at its ${limit} s limit" ;;
    *) status=failed note="exit status $rc; see log.txt" ;;
  esac
  record "$name" "$status" "$rc" "$secs" "$note"
  # shellcheck disable=SC1091
  [ -f "$W/env.sh" ] && . "$W/env.sh"
  return 0
}

check() {  # check 0|1 (dry run)
  export DRY="$1"
  export W
  W="$(mktemp -d /tmp/dg-gpu-check.XXXXXX)"
  if [ "$DRY" = 1 ]; then export OUT="${OUT:-$W/out}"; fi
  if [ -z "${OUT:-}" ]; then echo "OUT must name the folder for the results"; exit 64; fi
  mkdir -p "$OUT"
  export OUT LOG="$OUT/log.txt" DEPTHGATE_APP="$BUNDLE/app" BACKEND
  BACKEND=$([ "$DRY" = 1 ] && echo cpu || echo cuda)
  # The node part unpacks the carried CUDA library and names it in $DEPTHGATE_CUDA_LIB, which the
  # addon and the op harness both read.
  unset DEPTHGATE_CUDA_LIB
  : >"$LOG"
  : >"$W/parts.jsonl"
  local start
  start=$(date +%s)
  DEADLINE=$((start + ${DG_GPU_CHECK_BUDGET:-420}))
  local cmd="DEPTHGATE_REQUIRE_GPU=${DEPTHGATE_REQUIRE_GPU:-} bash scripts/gpu-check.sh $([ "$DRY" = 1 ] && echo --dry-run)"
  say "mode $([ "$DRY" = 1 ] && echo dry-run || echo gpu), work $W, out $OUT, budget $((DEADLINE - start)) s"
  if [ ! -f "$BUNDLE/manifest.json" ]; then
    say "no bundle at $BUNDLE: run 'bash scripts/gpu-check.sh --prepare' here and name .gpu-bundle in carry"
    record bundle failed 1 0 "no bundle at $BUNDLE"
  fi
  local nogpu="" nonode=""
  [ "$DRY" = 1 ] && nogpu="dry run: no GPU here"
  [ "$DRY" != 1 ] && [ "${DEPTHGATE_REQUIRE_GPU:-}" != 1 ] && say "note: DEPTHGATE_REQUIRE_GPU is not 1"
  run_part node 40
  [ -x "$W/node" ] && "$W/node" --version >/dev/null 2>&1 || nonode="node did not unpack or run"
  run_part env 30
  run_part cuda 180 "${nogpu:-$nonode}"
  run_part ops 90
  run_part engine 90 "$nonode"
  run_part hf 90 "$nonode"
  run_part memcheck 70 "${nogpu:-$nonode}"
  [ "$DRY" = 1 ] && run_part python_checks 30
  run_part bench_torch 170 "$nonode"
  run_part bench_depthgate 120 "$nonode"
  run_part bench_ops 60
  python3 "$ROOT/scripts/gpu/summarize.py" --work "$W" --out "$OUT" --mode "$([ "$DRY" = 1 ] && echo dry-run || echo gpu)" \
    --command "$cmd" --bundle "$BUNDLE/manifest.json" 2>&1 | tee -a "$LOG"
  [ -n "${DG_MODELS:-}" ] && rm -rf "$DG_MODELS"
  # $OUT's limits: at most 8 files, each under 16 MiB.
  local f n=0
  for f in "$OUT"/*; do
    [ -f "$f" ] || continue
    n=$((n + 1))
    if [ "$(stat -c %s "$f")" -ge $((16 * 1024 * 1024)) ]; then
      tail -c $((15 * 1024 * 1024)) "$f" >"$f.tmp" && mv "$f.tmp" "$f"
      say "$(basename "$f") cut to its last 15 MiB"
    fi
  done
  say "done in $(($(date +%s) - start)) s; $n files in $OUT"
  [ "$n" -le 8 ] || say "WARNING: $n files in $OUT (at most 8 come back)"
  [ "$DRY" = 1 ] || return 0
  # The dry run fails when a part that can run here failed.
  ! grep -q '"status": "\(failed\|timeout\)"' "$W/parts.jsonl"
}

case "${1:-}" in
  --prepare) prepare ;;
  --dry-run)
    [ -n "${2:-}" ] && export OUT="$2"
    # DG_SKIP_PREPARE=1: use the bundle as it is (a second dry run right after a first).
    [ -n "${DG_SKIP_PREPARE:-}" ] || prepare || exit 1
    check 1
    ;;
  --part)
    # shellcheck disable=SC1091
    [ -f "$W/env.sh" ] && . "$W/env.sh"
    # DG_GPU_CHECK_BREAK=NAME makes that part fail at once (the test that a failing part is
    # recorded and the others still run).
    [ "${DG_GPU_CHECK_BREAK:-}" = "$2" ] && { echo "part $2 broken on purpose (DG_GPU_CHECK_BREAK)"; exit 3; }
    "part_$2"
    ;;
  "") check 0 ;;
  *)
    sed -n '2,30p' "$SELF"
    exit 64
    ;;
esac
