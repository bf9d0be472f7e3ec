"""Independent reference computations in numpy, shared by the tests."""

from __future__ import annotations

import numpy as np


def refit(x, y, w, wd, C, theta0):
    """argmin (1/n) sum_j w_j CE_j + wd/2 ||theta||^2 for theta = [W (C x d), b], by Newton's method in numpy."""
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    V = np.hstack([theta0[: C * d].reshape(C, d), theta0[C * d:, None]])  # C x (d+1)
    for _ in range(50):
        z = xa @ V.T
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        r = (p - np.eye(C)[y]) * w[:, None] / n
        grad = (r.T @ xa).ravel() + wd * V.ravel()
        H = sum(w[j] * np.kron(np.diag(p[j]) - np.outer(p[j], p[j]), np.outer(xa[j], xa[j])) for j in range(n)) / n
        V = V - np.linalg.solve(H + wd * np.eye(H.shape[0]), grad).reshape(C, d + 1)
        if np.abs(grad).max() < 1e-15:
            break
    return V[:, :d], V[:, d]
