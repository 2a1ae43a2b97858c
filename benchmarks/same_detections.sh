#!/usr/bin/env bash
# Are this tree's detections byte-identical to those of an earlier commit, on the same detector?
#
#   bash benchmarks/same_detections.sh BASE_COMMIT [WORK_FOLDER]
#
# Trains the quick demo's detector (tools/demo.py experiment=demo_quick, about 3 minutes on 2 cores) with
# BASE_COMMIT's code in a git worktree, then runs that one detector with BASE_COMMIT's code and with this
# tree's code: tools/detect_dataset.py over the 40 val images from the stored proposals with torch fp32,
# ONNX Runtime fp32 and ONNX Runtime int8, and `tools/detect.py` with live proposals (selective search +
# MultiBox) on 6 images. Each side works on its own copy of the detector file (its own ONNX cache).
# Prints one line per output file and IDENTICAL, or the files that differ (exit status 1).
# WORK_FOLDER (default: a new temporary folder) is created; nothing outside it is written. Called again with
# the same WORK_FOLDER (from another tree, say a branch's worktree), it reuses the detector and the base's
# files made there and writes this tree's files in after_<tree folder name>.
set -euo pipefail
BASE=${1:?usage: same_detections.sh BASE_COMMIT [WORK_FOLDER]}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(realpath -m "${2:-$(mktemp -d -t same_detections.XXXXXX)}")
# the tree's own venv, or (in a git worktree, which has none) the main checkout's
PY=${PYTHON:-$HERE/.venv/bin/python}
[ -x "$PY" ] || PY=$(dirname "$(realpath "$(git -C "$HERE" rev-parse --git-common-dir)")")/.venv/bin/python
[ -x "$PY" ] || { echo "no Python with the project installed: set PYTHON=<venv>/bin/python" >&2; exit 2; }
mkdir -p "$WORK"
exec 9> "$WORK/.lock"
flock 9  # one call at a time trains the detector and writes the base's files; the others wait for them
if [ ! -d "$WORK/base" ]; then git -C "$HERE" worktree add --detach "$WORK/base" "$BASE" >/dev/null; fi
TRAIN=$WORK/train
if [ ! -f "$TRAIN/detector.pt" ]; then
    echo "training the quick demo's detector with $BASE's code in $TRAIN (log: $WORK/train.log)"
    (cd "$WORK/base" && PYTHONPATH="$WORK/base" "$PY" tools/demo.py experiment=demo_quick work_dir="$TRAIN" > "$WORK/train.log" 2>&1)
fi
STORE=$(ls "$TRAIN"/proposals/synthetic_val_*.npz | head -1)

detections() {  # detections TREE OUT: the four runs with TREE's code into OUT, then the sha256 of each file
    local tree=$1 out=$2
    rm -rf "$out" && mkdir -p "$out" && cp "$TRAIN/detector.pt" "$out/detector.pt"
    local common=(experiment=demo_quick "work_dir=$TRAIN" "detector=$out/detector.pt")
    for run in "torch fp32" "onnxruntime fp32" "onnxruntime int8"; do
        set -- $run
        (cd "$tree" && PYTHONPATH="$tree" "$PY" tools/detect_dataset.py "${common[@]}" "proposals_store=$STORE" \
            "output=$out/val_$1_$2.txt" "backend=$1" "precision=$2" progress=false resume=false) > "$out/log_$1_$2.txt" 2>&1
    done
    (cd "$tree" && PYTHONPATH="$tree" "$PY" tools/detect.py "$TRAIN/data/synthetic_det/Data/DET/val" max_images=6 \
        "${common[@]}" "out_dir=$out/live" coco_results=true draw=false precision=fp32) > "$out/log_live.txt" 2>&1
    (cd "$out" && sha256sum val_*.txt val_*_fp32.json val_*_int8.json live/*.json | sort -k2)
}

if [ ! -s "$WORK/before.sha256" ]; then
    detections "$WORK/base" "$WORK/before" > "$WORK/before.sha256.tmp" && mv "$WORK/before.sha256.tmp" "$WORK/before.sha256"
fi
flock -u 9
AFTER=$WORK/after_$(basename "$HERE")
detections "$HERE" "$AFTER" > "$AFTER.sha256"
cat "$AFTER.sha256"
if diff "$WORK/before.sha256" "$AFTER.sha256" > "$AFTER.diff"; then
    echo "IDENTICAL: $(wc -l < "$AFTER.sha256") detection files byte-identical to $BASE's on the same detector"
else
    echo "DIFFERENT (before < > after):"; cat "$AFTER.diff"; exit 1
fi
