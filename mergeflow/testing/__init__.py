"""Small models built offline (random-weight configs, and ViTs trained in seconds on scikit-learn's digits)
that the tests, the demo and the benchmarks share. Nothing is downloaded."""
