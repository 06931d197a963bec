"""Data-dependent statistics of a model (diagonal Fisher, Gram matrices of linear-layer inputs)."""
