"""Two interleaved spirals, a classic toy set no library ships in this form (seeded, no downloads)."""

import numpy as np


def spirals(n: int = 300, noise: float = 0.3, turns: float = 1.5, seed: int = 0):
    """(x [n, 2] float, y [n] int in {0, 1}): points along two spirals offset by half a turn."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.sqrt(rng.random(n)) * turns * 2 * np.pi
    angle = t + np.pi * y
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (turns * np.pi)
    return x + noise / (turns * np.pi) * rng.normal(size=x.shape), y
