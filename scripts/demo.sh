#!/usr/bin/env bash
# The whole method on the built-in demo dataset, start to finish (make demo):
# train -> export fp32 and fp16 -> bnwvad-infer (one video with its plot, then the test set)
# -> bnwvad-eval of the exported model's scores -> bench/run.py --quick.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
OUT=${OUT:-runs/demo}

echo "== 1/6 train on the demo dataset (generated into demo_data/ on first use)"
if [ -f "$OUT/last.pt" ]; then
    # An earlier `make demo` left its run: continue it (nothing to do when it is complete).
    "$BIN/bnwvad-train" --resume --out "$OUT" --no-progress
else
    "$BIN/bnwvad-train" --out "$OUT" --no-progress
fi
echo "== 2/6 export fp32 and fp16 (each verified against PyTorch)"
"$BIN/bnwvad-export" "$OUT/best.pt" -o "$OUT/model.onnx" 2>&1 | tail -n 2
"$BIN/bnwvad-export" "$OUT/best.pt" -o "$OUT/model_fp16.onnx" --fp16 2>&1 | tail -n 2
video=$(grep -m 1 _label_G demo_data/list/XD_Test.list | sed 's/__[0-9]*\.npy$//')
# Threshold at a 1% false-alarm rate on normal TRAINING videos (never on the test split).
calibrate=$(grep _label_A demo_data/list/XD_Train.list | head -n 40 | sed 's|^|--calibrate demo_data/|')
echo "== 3/6 bnwvad-infer on one demo test video (an explosion), with events and its plot"
# shellcheck disable=SC2086  # one --calibrate per file
"$BIN/bnwvad-infer" demo_data/"$video"__*.npy --model "$OUT/model.onnx" --out "$OUT/one" --overwrite \
    $calibrate --false-alarm-rate 0.01 --fps 24 --plot
echo "== 4/6 bnwvad-infer on the whole demo test set"
"$BIN/bnwvad-infer" demo_data/list/XD_Test.list --root demo_data --model "$OUT/model.onnx" \
    --out "$OUT/scores" --overwrite -q
echo "== 5/6 bnwvad-eval of the exported model's scores"
"$BIN/bnwvad-eval" --scores "$OUT/scores" --dataset demo --json "$OUT/metrics_onnx.json"
echo "== 6/6 benchmark, quick"
"$BIN/python" bench/run.py --quick --checkpoint "$OUT/best.pt"
