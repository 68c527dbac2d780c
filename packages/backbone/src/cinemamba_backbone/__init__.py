"""cinemamba_backbone."""
