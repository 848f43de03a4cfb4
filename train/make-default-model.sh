#!/bin/sh
# Rebuilds the embedded default model (models/default) from Debian packages, on the CPU:
# corpus, tokenizer, base model, FlexiDepth routers at two penalties, SkipLayer routers, block
# influence. About 90 minutes on 2 cores. Needs root for apt-get, and `npm install` done (the
# token ids come from depthgate's own tokenizer).
#   sh train/make-default-model.sh [OUT_DIR]        (default: models/default)
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-models/default}
DATA=train/data
PY=/usr/bin/python3   # Debian's python3-torch lives in the system Python

if ! $PY -c 'import torch' 2>/dev/null || ! command -v bible >/dev/null; then
  apt-get install -y --no-install-recommends python3-torch python3-numpy libopenblas0-pthread bible-kjv
fi

$PY train/corpus.py $DATA
$PY train/bpe.py $DATA/train.txt $DATA/tok --vocab 4096 --max-length 256
node train/encode.js $DATA/tok $DATA/train.txt $DATA/train.bin
node train/encode.js $DATA/tok $DATA/heldout.txt $DATA/heldout.bin

$PY train/pretrain.py --data $DATA --tokenizer $DATA/tok --out $DATA/base \
  --layers 12 --hidden 256 --heads 4 --kv-heads 2 --intermediate 512 --seq 256 --batch 16 --lr 2e-3 --minutes 55
mkdir -p "$OUT"
cp $DATA/base/config.json $DATA/base/generation_config.json $DATA/base/model.safetensors \
   $DATA/base/tokenizer.json $DATA/base/tokenizer_config.json $DATA/base/train_log.json "$OUT"/
cp $DATA/corpus.json "$OUT"/corpus.json

$PY train/routers.py flexidepth --model "$OUT" --data $DATA --out "$OUT"/flexidepth-p1e-2.safetensors --penalty 1e-2 --minutes 8
$PY train/routers.py flexidepth --model "$OUT" --data $DATA --out "$OUT"/flexidepth-p3e-2.safetensors --penalty 3e-2 --minutes 8
$PY train/routers.py skiplayer --model "$OUT" --data $DATA --out "$OUT"/skiplayer.safetensors --density 0.75 --balance 1.0 --minutes 8
$PY train/block_influence.py --model "$OUT" --data $DATA > "$OUT"/block_influence.json
cp $DATA/heldout.txt bench/data/kjv-heldout.txt
echo "done: $OUT"
