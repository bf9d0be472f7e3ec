"""Early stopping on a held-out validation set, per model of an ensemble.

Every ``every`` steps (and at the last step) each model's mean validation cross-entropy is measured (dropout
off). A model's result is its parameters at the evaluation with the lowest validation loss among those up to
the one where it had gone ``patience`` evaluations without a strictly lower loss. Models never interact, so
letting a stopped model run on inside an ensemble does not change its result; training ends once every
model has stopped, which for a single model is plain early stopping.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from runners.ensemble import Stacked
from runners.forward import ensemble_logits
from runners.objective import per_example_loss


class BestByValidation:
    """An ``on_step`` monitor for ``train_ensemble``: returns True once every model has stopped."""

    def __init__(self, module: nn.Module, x_val: Tensor, y_val: Tensor, every: int, patience: int, steps: int,
                 models: int) -> None:
        self.module, self.x_val, self.y_val = module, x_val, y_val
        self.every, self.patience, self.steps = max(1, every), patience, steps
        self.best_loss = torch.full((models,), float("inf"), dtype=torch.float64)
        self.waited = torch.zeros(models, dtype=torch.long)
        self.stopped = torch.zeros(models, dtype=torch.bool)
        self.best: Stacked | None = None
        self.last_step = -1  # the step training ended after

    def __call__(self, step: int, params: Stacked) -> bool:
        self.last_step = step
        if (step + 1) % self.every and step != self.steps - 1:
            return False
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                logits = ensemble_logits(self.module, params, self.x_val)
                targets = self.y_val.expand(logits.shape[0], *self.y_val.shape)
                losses = per_example_loss(logits, targets).mean(1).to(torch.float64)
        finally:
            self.module.train(was)
        improved = (losses < self.best_loss) & ~self.stopped
        if self.best is None:
            self.best = {k: v.detach().clone() for k, v in params.items()}
        elif bool(improved.any()):
            for k, v in params.items():
                self.best[k][improved] = v.detach()[improved]
        self.best_loss = torch.where(improved, losses, self.best_loss)
        self.waited = torch.where(improved, torch.zeros_like(self.waited), self.waited + (~self.stopped).long())
        self.stopped |= self.waited >= self.patience
        return bool(self.stopped.all())

    def result(self, final: Stacked) -> Stacked:
        """Each model's kept parameters (the final ones if no evaluation happened)."""
        return final if self.best is None else {k: v.clone() for k, v in self.best.items()}
