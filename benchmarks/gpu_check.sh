#!/usr/bin/env bash
# The one GPU check (issues 19, 27 and 35), for a session that has a CUDA machine, sized so that one 15-minute
# lease holds the machine's start-up, this script (at most 5 min 40 s of time boxes) and a rerun. Each step is
# time-boxed (seconds in brackets) and runs even when one before it failed, the most wanted first, so that a
# lease cut short keeps what ran; each writes its own output file under $OUT (default: ./gpu-check):
#   1. benchmarks/estimators.py --problem images-resnet --device cuda [150, 45 per estimator]: every estimator
#      on ResNet-20 (270,906 parameters), inflang beside the peers, each row printed as it is measured; its
#      gradient and Hessian-vector chunks are sized by the GPU's memory (runners.device.chunk_bytes).
#      PEERS_PYTHON (default: $PYTHON) is a Python with a CUDA torch and dattri, kronfluence and captum;
#      without them inflang runs alone;
#   2. tests/test_device.py [60]: a study on the GPU repeats itself exactly and agrees with the CPU run;
#   3. one cell of the quickstart (depth 1, 3 seeds) end to end on --device cuda, its plan priced on the GPU
#      (--calibrate) [20 + 50]: small models on a GPU are bound by kernel launches, so the whole quickstart
#      outlasted its box on an H200;
#   4. benchmarks/retrain.py --device cuda --quick --only iris [60]: the sequential loop, the eager and the
#      compiled engine on the Iris MLP.
# Run from the repository root with a Python ($PYTHON, default python) that has a CUDA build of torch and
# inflang's dependencies (pip install -e '.[test]', or the source tree on PYTHONPATH).
set -uo pipefail
OUT="${OUT:-gpu-check}"
PYTHON="${PYTHON:-python}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
DB="$(mktemp -d)/quickstart.duckdb"  # not under $OUT: only small files come back from a lease
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt" || exit 1
PEERS_PYTHON="${PEERS_PYTHON:-$PYTHON}"
peers=()
if "$PEERS_PYTHON" -c "import torch, dattri, kronfluence, captum; assert torch.cuda.is_available()" 2>/dev/null; then
    peers=(--peers-python "$PEERS_PYTHON")
    echo "peers: $("$PEERS_PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|dattri|kronfluence|captum) ' | tr -s ' ' | paste -sd ',')" > "$OUT/estimators-resnet.txt"
else
    echo "no peers: $PEERS_PYTHON lacks dattri, kronfluence, captum or CUDA; inflang alone" > "$OUT/estimators-resnet.txt"
fi
timeout 150 "$PYTHON" benchmarks/estimators.py --problem images-resnet --device cuda --threads 1 --timeout 45 \
    ${peers[@]+"${peers[@]}"} 2>&1 | tee -a "$OUT/estimators-resnet.txt"
timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider -n 0 tests/test_device.py 2>&1 | tee "$OUT/test_device.txt"
( timeout 20 "$PYTHON" -m inflang.cli plan studies/quickstart.yaml --db "$DB" --calibrate --device cuda \
      --select depth=1
  time timeout 50 "$PYTHON" -m inflang.cli run studies/quickstart.yaml --db "$DB" --device cuda --select depth=1
) 2>&1 | tail -40 | tee "$OUT/quickstart.txt"
timeout 60 "$PYTHON" benchmarks/retrain.py --device cuda --quick --only iris --json "$OUT/retrain-quick.json" 2>&1 \
    | grep -v USDT \
    | tee "$OUT/retrain-quick.txt"
