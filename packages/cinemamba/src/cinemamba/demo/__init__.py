"""The end-to-end demo (`cinemamba demo`) and the resumable stage runner it is built on."""
