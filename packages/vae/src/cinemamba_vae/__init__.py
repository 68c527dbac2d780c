"""cinemamba_vae."""
