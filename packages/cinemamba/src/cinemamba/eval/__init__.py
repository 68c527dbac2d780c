"""Evaluation: ground-truth scores on the embedded set, VAE reconstruction, FVD, and `cinemamba eval`."""
