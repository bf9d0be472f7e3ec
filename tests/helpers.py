"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import duckdb


def rows(db: Path, sql: str) -> list[tuple]:
    """All rows of a query on a results database, opened read-only and closed again."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def toy_mlp(seed: int, epochs: int = 500):  # type: ignore[no-untyped-def]
    """A float64 tanh MLP 3-4-3 trained by L-BFGS (weight decay 0.01) on 40 seeded points whose classes follow
    two thresholds: (module, x, y, training spec, trained)."""
    import torch

    from inflang.spec import MlpModel, TrainingSpec
    from runners.models import build
    from runners.train import train

    torch.manual_seed(seed)
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    module = build(MlpModel(arch="mlp", depth=1, width=4, activation="tanh"), 3, 3, seed=0, dtype=torch.float64)
    training = TrainingSpec(optimizer="lbfgs", lr=1.0, epochs=epochs, weight_decay=0.01)
    return module, x, y, training, train(module, x, y, training, 0)
