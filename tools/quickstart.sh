#!/usr/bin/env bash
# The whole job on a generated sample: random-weight checkpoints in the official formats,
# a small multilingual corpus (espeak-ng speech when installed, synthetic otherwise),
# then preprocess-data, verify, pairs and stats. Usage: bash tools/quickstart.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-sample}
export HF_HUB_OFFLINE=1
python tools/make_checkpoints.py "$DIR/models" --size tiny
python tools/make_sample.py "$DIR/corpus" --count 24
preprocess-data \
  --manifest "$DIR/corpus/manifest.jsonl" --output-dir "$DIR/features" \
  --config "$DIR/models/config.yaml" --tokenizer "$DIR/models/bpe.model" \
  --w2v-bert "$DIR/models/w2v-bert-2.0" \
  --semantic-codec "$DIR/models/semantic_codec/model.safetensors" \
  --val-ratio 0.2
preprocess verify "$DIR/features"
preprocess pairs "$DIR/features" --force
preprocess stats "$DIR/features"
echo "features, manifests and pair files are in $DIR/features"
