"""Layer pruning: find residual units, score them, choose which go, bypass them."""
