"""cinemamba: data, DeepSpeed training, latent export, evaluation and the CLI."""

__version__ = "0.1.0"
