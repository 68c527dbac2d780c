"""cinemamba_conditioning."""
