"""Video data: PyAV I/O, WebDataset shards, the loader and the embedded synthetic set."""
