"""cinemamba_sampling."""
