#!/usr/bin/env bash
# The one GPU check of issue 19, for a session that has a CUDA machine (about 10 minutes there):
#   1. tests/test_device.py: a study on the GPU repeats itself exactly and agrees with the CPU run;
#   2. the quickstart study end to end on --device cuda, its plan priced on the GPU (--calibrate);
#   3. benchmarks/retrain.py on the GPU: the sequential loop, the eager and the compiled engine;
#   4. benchmarks/estimators.py --problem images-resnet --device cuda: every estimator on ResNet-20 (270,906
#      parameters), inflang beside the peers. PEERS_PYTHON (default: python) is a Python with a CUDA torch and
#      dattri, kronfluence and captum (pip install dattri kronfluence captum, into this environment or a venv made
#      with --system-site-packages so that it keeps the CUDA torch); without them inflang runs alone.
# Run from the repository root with a Python that has a CUDA build of torch and inflang installed
# (pip install -e '.[test]'); results go to $OUT (default: ./gpu-check).
# Every step runs even when one before it failed (GPU minutes are scarce): each writes its own output file.
set -uo pipefail
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt" || exit 1
python -m pytest -q -p no:cacheprovider tests/test_device.py 2>&1 | tee "$OUT/test_device.txt"
python -m inflang.cli plan studies/quickstart.yaml --db "$OUT/quickstart.duckdb" --calibrate --device cuda 2>&1 | tee "$OUT/plan.txt"
( time python -m inflang.cli run studies/quickstart.yaml --db "$OUT/quickstart.duckdb" --device cuda ) 2>&1 | tail -25 | tee "$OUT/quickstart.txt"
python benchmarks/retrain.py --device cuda --only iris --json "$OUT/retrain-iris.json" 2>&1 | grep -v USDT | tee "$OUT/retrain-iris.txt"
python benchmarks/retrain.py --device cuda --only cnn --json "$OUT/retrain-cnn.json" 2>&1 | grep -v USDT | tee "$OUT/retrain-cnn.txt"
PEERS_PYTHON="${PEERS_PYTHON:-python}"
peers=()
if "$PEERS_PYTHON" -c "import torch, dattri, kronfluence, captum; assert torch.cuda.is_available()" 2>/dev/null; then
    peers=(--peers-python "$PEERS_PYTHON")
    echo "peers: $("$PEERS_PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|dattri|kronfluence|captum) ' | tr -s ' ' | paste -sd ',')" > "$OUT/estimators-resnet.txt"
else
    echo "no peers: $PEERS_PYTHON lacks dattri, kronfluence, captum or CUDA; inflang alone" > "$OUT/estimators-resnet.txt"
fi
python benchmarks/estimators.py --problem images-resnet --device cuda --threads 1 --timeout 900 ${peers[@]+"${peers[@]}"} 2>&1 | tee -a "$OUT/estimators-resnet.txt"
