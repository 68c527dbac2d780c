"""Subcommands of the `cinemamba` CLI, one module each (see `cinemamba.cli`)."""
