"""Accuracy recovery after pruning: information fusion into kept channels."""
