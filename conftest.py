"""Repo-wide pytest setup: offline hubs, CPU DeepSpeed, one torch thread, the `cuda` marker."""

import os

import pytest

# Tests must never reach a model hub; DeepSpeed must pick its CPU accelerator.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_for_fixtures():
    """Module- and session-scoped fixtures run before any function-scoped fixture; without this
    they computed at the default thread count (OMP_NUM_THREADS, else the core count) while the
    test bodies recomputed at one thread, and bit-for-bit comparisons of the two compared two
    different reduction orders (shard bytes, losses). Fixtures and bodies share one count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny tensors: one intra-op thread is faster, and two threads stall badly when
    other jobs share the 2-core CPU. A test that needs more threads sets them itself; this puts
    the count back to one for the next test (and the fixtures it builds)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda`-marked tests on machines without a GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
