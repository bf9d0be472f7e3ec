"""An attribution method of one's own: gradient similarity with each training point's gradient normalised
by a power of its own norm (alpha = 0 is grad_dot; alpha = 1 discounts points the model fits badly, whose large
gradients dominate plain similarity; in the spirit of RelatIF, Barshan et al. 2020)."""


def normalised_grad_dot(inputs, alpha=1.0):
    """scores [T, n] = (1/n) g_test . g_i / ||g_i||^alpha: a raw score that only ranks training points.
    ``inputs`` is the EstimatorInputs every inflang estimator receives (docs/language.md, "Your own code")."""
    g_test, g_train = inputs.test_gradients(), inputs.train_gradients()
    norms = g_train.norm(dim=1).clamp_min(1e-12) ** alpha
    return (g_test @ g_train.T) / norms[None, :] / inputs.n
