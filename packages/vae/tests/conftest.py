"""Shared test settings for cinemamba_vae."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread is faster, and far faster on an oversubscribed shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
