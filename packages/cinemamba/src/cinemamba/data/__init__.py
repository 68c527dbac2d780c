"""Video data: PyAV I/O, WebDataset shards, the clip loader and the embedded synthetic set."""
