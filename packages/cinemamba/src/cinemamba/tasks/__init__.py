"""Training tasks for the engine in `cinemamba.train` (one module per model family)."""
