"""Backbone tests: tiny tensors and many small ops, so run them single-threaded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    # Intra-op threads only add barrier waits on tensors this small (and stall badly when
    # the machine is shared); restore the setting so other packages' tests are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
