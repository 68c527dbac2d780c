"""Log lines that look like failures but are expected, dropped at the entry points (issue 18).

Only exact, known messages are dropped, and only where they need no action; everything else
(and these same messages where they do need action) reaches the user.
"""

from __future__ import annotations

import logging
from pathlib import Path

# torch.utils.cpp_extension warns at import (DeepSpeed imports it to build its ops) whenever a CUDA
# toolkit is installed but torch sees no GPU: on a CPU machine with nvcc that is every start.
_CPP_EXTENSION = "torch.utils.cpp_extension"
_NO_CUDA_RUNTIME = "No CUDA runtime is found"


def _gpu_device_present() -> bool:
    # The NVIDIA driver's control node: present on a GPU machine (a missing CUDA runtime there
    # is a real problem), absent on a CPU-only one.
    return Path("/dev/nvidiactl").exists()


def _drop_no_cuda_runtime(record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith(_NO_CUDA_RUNTIME) and not _gpu_device_present())


def quiet_expected_warnings() -> None:
    """Drop torch's "No CUDA runtime is found" on machines without a GPU; idempotent."""
    logger = logging.getLogger(_CPP_EXTENSION)
    if _drop_no_cuda_runtime not in logger.filters:
        logger.addFilter(_drop_no_cuda_runtime)
