"""Deep-Align (Navon et al., ICML 2024): a learned, data-free aligner of MLP weights, with the MLP family, the
optimisation baselines it is compared with, and its training."""
