#!/usr/bin/env bash
# The one GPU check of issue 19, for a session that has a CUDA machine (about 10 minutes there):
#   1. tests/test_device.py: a study on the GPU repeats itself exactly and agrees with the CPU run;
#   2. the quickstart study end to end on --device cuda, its plan priced on the GPU (--calibrate);
#   3. benchmarks/retrain.py on the GPU: the sequential loop, the eager and the compiled engine.
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
