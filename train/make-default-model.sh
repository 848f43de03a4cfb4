#!/bin/sh
# Rebuilds the embedded default model (models/default) from Debian packages, on the CPU:
# corpus, tokenizer, base model, FlexiDepth routers at two penalties, SkipLayer routers, block
# influence. About 2 hours on 2 cores. Needs root for apt-get, and `npm install` done (the
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
$PY train/bpe.py $DATA/train.txt $DATA/tok --vocab 4096
node train/encode.js $DATA/tok $DATA/train.txt $DATA/train.bin
node train/encode.js $DATA/tok $DATA/heldout.txt $DATA/heldout.bin

$PY train/pretrain.py --data $DATA --tokenizer $DATA/tok --out $DATA/base \
  --layers 12 --hidden 256 --heads 4 --kv-heads 2 --intermediate 512 --seq 256 --batch 16 --lr 2e-3 --minutes 55
mkdir -p "$OUT"
cp $DATA/base/config.json $DATA/base/generation_config.json $DATA/base/model.safetensors \
   $DATA/base/tokenizer.json $DATA/base/train_log.json "$OUT"/
# The tokenizer's model_max_length follows the model's 256 positions.
$PY -c "import json,sys; d=json.load(open(sys.argv[1])); d['model_max_length']=256; json.dump(d, open(sys.argv[2],'w'), indent=2, sort_keys=True)" \
  $DATA/base/tokenizer_config.json "$OUT"/tokenizer_config.json
cp $DATA/corpus.json "$OUT"/corpus.json

# Two router runs at a time, one thread each; low LR (at 2e-3 the routers collapse to skipping).
for p in 1e-2 3e-3; do
  $PY train/routers.py flexidepth --model "$OUT" --data $DATA --out "$OUT"/flexidepth-p$p.safetensors \
    --penalty $p --lr 5e-4 --batch 8 --minutes 12 --threads 1 &
done; wait
for p in 1e-3 3e-4; do
  $PY train/routers.py flexidepth --model "$OUT" --data $DATA --out "$OUT"/flexidepth-p$p.safetensors \
    --penalty $p --lr 5e-4 --batch 8 --minutes 9 --threads 1 &
done; wait
$PY train/routers.py skiplayer --model "$OUT" --data $DATA --out "$OUT"/skiplayer.safetensors \
  --density 0.75 --balance 1.0 --lr 5e-4 --batch 8 --minutes 7 --threads 2
$PY train/block_influence.py --model "$OUT" --data $DATA > "$OUT"/block_influence.json
cp $DATA/heldout.txt bench/data/kjv-heldout.txt
echo "done: $OUT"
