"""How masks are learned: the fit's config, the run and its step, the sparsity price, the
KL budget, checkpoints, and sweeps over circuit sizes."""
