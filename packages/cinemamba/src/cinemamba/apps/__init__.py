"""Applications built on the cinemamba library: the demo, the backbone ablation and the
benchmarks, with the reports they write.

They import the library (`cinemamba.data`, `latents`, `train`, `tasks`, `eval`, ...) and the
model packages; the library never imports them, and they never import the CLI
(`cinemamba.cli`, `cinemamba.commands`), which sits on top of both (docs/architecture.md;
enforced by packages/cinemamba/tests/test_imports.py).
"""
