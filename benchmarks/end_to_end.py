"""What a user waits for: the 120-removal Iris study (``benchmarks/studies/iris120.yaml``) run end to end by
``inflang run`` (process start to exit: imports, plan, training, curvature, influence, every retraining,
metrics, pooling, the database), against the same computation written as a sequential PyTorch loop
(``benchmarks/hand_loop.py``), measured side by side in this one run.

    python benchmarks/end_to_end.py [--repeats 3] [--engines eager,auto] [--hand-removals 120] [--json FILE]

Each study run is a fresh process on a fresh database with an empty torch.compile cache (``--warm-cache``
keeps one cache for every run) and an empty inflang cache (no measured rates), so a compile is paid as a
first-time user pays it; the best of ``--repeats``
runs is kept per engine. ``--hand-removals N`` times N of the loop's 120 retrainings and scales that part to
120 (each is the same loop, so its time is linear in their number). The rerun row times ``inflang run`` on a
finished study (nothing to compute). Also printed: the machine's float32 matmul peak at one thread, against
which the engine's FLOP floor is stated in ``benchmarks/retrain.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "studies" / "iris120.yaml"
CLI = "import sys; from inflang.cli import main; sys.argv[0] = 'inflang'; main()"


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def study_run(engine: str, work: Path, cache: Path | None, root: Path = ROOT, study: Path = STUDY) -> dict[str, float]:
    """Seconds of one fresh ``inflang run`` (and of its rerun) of ``study`` with the code at ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root), "TORCHINDUCTOR_CACHE_DIR": str(cache or work / "inductor"),
           "INFLANG_CACHE": str(Path(tempfile.mkdtemp(dir=work, prefix="cache-")))}  # no rates: what a new user has
    db = work / f"{engine}-{time.monotonic_ns()}.duckdb"
    seconds, _ = timed([sys.executable, "-c", CLI, "run", str(study), "--db", str(db), "--engine", engine], work, env)
    rerun, _ = timed([sys.executable, "-c", CLI, "run", str(study), "--db", str(db), "--engine", engine], work, env)
    return {"seconds": seconds, "rerun_seconds": rerun}


def hand_loop(removals: int, work: Path, root: Path = ROOT) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    seconds, out = timed([sys.executable, str(ROOT / "benchmarks" / "hand_loop.py"), "--removals", str(removals)],
                         work, env)
    found = json.loads(out.strip().splitlines()[-1])
    measured = found["retrain_seconds"] * found["removals_timed"] / 120
    return {**found, "seconds": seconds - measured + found["retrain_seconds"]}


def matmul_peak() -> float:
    """GFLOP/s of a 1024^2 float32 matmul on one thread, best of 3 x 20."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, time.perf_counter() - began)
    return 20 * 2 * 1024 ** 3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="study runs per engine; the best is kept")
    parser.add_argument("--engines", default="eager,auto")
    parser.add_argument("--hand-removals", type=int, default=120, help="retrainings the loop times (scaled to 120)")
    parser.add_argument("--warm-cache", action="store_true", help="one torch.compile cache for every run")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="inflang-e2e-") as folder:
        work = Path(folder)
        shared = work / "inductor-shared" if args.warm_cache else None
        runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
        for _ in range(args.repeats):  # engines in turn, so that a slow spell of the machine hits both
            for engine in engines:
                cache = shared or Path(tempfile.mkdtemp(dir=work, prefix="inductor-"))
                runs[engine].append(study_run(engine, work, cache))
                print(f"study, engine {engine}: {runs[engine][-1]['seconds']:.2f} s", flush=True)
        hand = hand_loop(args.hand_removals, work)
    best = {e: min(r["seconds"] for r in runs[e]) for e in engines}
    rerun = min(r["rerun_seconds"] for rs in runs.values() for r in rs)
    peak = matmul_peak()
    print(f"\nhand-written sequential loop: {hand['seconds']:.1f} s ({hand['removals_timed']} of 120 retrainings "
          f"timed; Spearman {hand['spearman']:.3f}, Pearson {hand['pearson']:.3f})")
    for e in engines:
        each = ", ".join(f"{r['seconds']:.2f}" for r in runs[e])
        print(f"inflang run, engine {e}: best {best[e]:.2f} s of {args.repeats} ({each}); "
              f"{hand['seconds'] / best[e]:.1f}x faster than the loop")
    if "auto" in best and "eager" in best:
        print(f"auto / eager: {best['auto'] / best['eager']:.3f} (best of {args.repeats} each)")
    print(f"rerun of a finished study: {rerun:.2f} s (best)")
    print(f"float32 matmul peak, one thread: {peak:.1f} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"hand_loop": hand, "study": runs, "best": best, "rerun": rerun,
                                               "matmul_peak_gflops": peak}, indent=1))


if __name__ == "__main__":
    main()
