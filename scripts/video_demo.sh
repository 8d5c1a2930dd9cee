#!/usr/bin/env bash
# Video in, scores out: a short synthetic video (written with PyAV, nothing downloaded)
#   -> bnwvad-export i3d (the I3D feature extractor to ONNX)
#   -> bnwvad-extract (features in the datasets' layout)
#   -> bnwvad-infer VIDEO --extractor (the same, scored directly from the video file).
#
# READ THIS FIRST: both networks here have RANDOM weights. The extractor uses
# bnwvad.i3d.deterministic_state_dict() (reproducible random I3D weights, the ones the tests
# use), and the detector is a freshly initialised, untrained BN-WVAD. The features and the
# anomaly scores this prints are therefore MEANINGLESS: the demo shows the plumbing (decode,
# crops, extraction, scoring, run folders, summaries), not detection.
#
# With real weights:
#   1. the Kinetics-400 RGB I3D of pytorch-i3d (rgb_imagenet.pt):
#        bnwvad-export i3d rgb_imagenet.pt -o i3d.onnx          # verified against PyTorch
#   2. a trained BN-WVAD model (bnwvad-train on your features, or the published checkpoint):
#        bnwvad-export best.pt -o model.onnx
#   3. bnwvad-infer my_video.mp4 --extractor i3d.onnx --model model.onnx --out scores --plot
#      (or bnwvad-extract videos/ --extractor i3d.onnx --crops 10 --out feats, then train / score)
#
# Needs the export, cpu and video extras (pip install "bnwvad[export,cpu,video]").
# About 2-4 minutes on 2 CPU cores, most of it the full-size I3D export and its 20 clips.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
OUT=${OUT:-runs/video_demo}
mkdir -p "$OUT"

echo "== 1/5 a synthetic 2.1 s video (64 frames, 320x240, 30 fps, H.264) with PyAV"
"$BIN/python" - "$OUT/demo.mp4" <<'EOF'
import sys
from fractions import Fraction
import av
import numpy as np

h, w, n = 240, 320, 64
yy, xx = np.mgrid[0:h, 0:w]
rng = np.random.default_rng(0)
with av.open(sys.argv[1], "w") as c:
    s = c.add_stream("libx264", rate=Fraction(30))
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for i in range(n):
        img = ((xx + 5 * i) % 256)[..., None] * np.array([1.0, 0.7, 0.4]) + 40 * (i > n // 2)
        img = np.clip(img + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
print(f"wrote {sys.argv[1]}")
EOF

echo "== 2/5 random (deterministic) I3D weights -> i3d_random.pt; an untrained BN-WVAD -> detector_random.pt"
"$BIN/python" - "$OUT" <<'EOF'
import sys
import torch
from bnwvad.checkpoint import save_checkpoint
from bnwvad.config import get_preset
from bnwvad.i3d import deterministic_state_dict
from bnwvad.model import BNWVAD

out = sys.argv[1]
# The full network's state_dict under pytorch-i3d's own names (what rgb_imagenet.pt holds).
torch.save(deterministic_state_dict(), f"{out}/i3d_random.pt")
torch.manual_seed(0)
save_checkpoint(f"{out}/detector_random.pt", BNWVAD(get_preset("xd").model_config()), preset="xd")
print("RANDOM weights: the features and scores below mean nothing")
EOF

echo "== 3/5 bnwvad-export i3d (full-size network, verified against PyTorch) and the detector"
[ -f "$OUT/i3d.onnx" ] || "$BIN/bnwvad-export" i3d "$OUT/i3d_random.pt" -o "$OUT/i3d.onnx" 2>&1 | tail -n 2
[ -f "$OUT/model.onnx" ] || "$BIN/bnwvad-export" "$OUT/detector_random.pt" -o "$OUT/model.onnx" 2>&1 | tail -n 2

echo "== 4/5 bnwvad-extract: 5 crops -> $OUT/feats/demo__<k>.npy (a rerun skips the finished video)"
"$BIN/bnwvad-extract" "$OUT/demo.mp4" --extractor "$OUT/i3d.onnx" --crops 5 --out "$OUT/feats"

echo "== 5/5 bnwvad-infer VIDEO --extractor: extraction and scoring in one command"
"$BIN/bnwvad-infer" "$OUT/demo.mp4" --extractor "$OUT/i3d.onnx" --model "$OUT/model.onnx" \
    --out "$OUT/scores" --overwrite --threshold 0.5
echo
echo "Outputs: $OUT/feats (features + summary.json), $OUT/scores (scores, results.npz, summary.json)."
echo "Reminder: RANDOM weights, so the scores are meaningless; see the top of $0 for real weights."
