"""The C allocator of a training process: freed activation memory kept for the next step.

A training step allocates and frees the same large tensors every step (a ``[4096, 528]`` feature
block is 8.6 MB). glibc's ``malloc`` serves blocks above its mmap threshold with fresh ``mmap``
pages and returns freed heap tops above its trim threshold to the system, so each step pays page
faults on memory it had a moment before: measured on the many-small-tables benchmark (MMoE, batch
4096 per rank, 2 ranks on 2 cores), 205,000 samples/s with glibc's defaults and about 225,000
with these settings, at the same loss to the bit (docs/performance.md). This is what TorchRec and
Intel's CPU guides get by preloading jemalloc or tcmalloc; here it is glibc's own ``mallopt``.

The cost: a process keeps up to ``trim_threshold`` of freed memory instead of returning it, so
its resident size stays near its peak. Off with ``TORCHREC_FUSION_MALLOC=default``.
"""

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 64 << 20  # blocks above this still get their own mapping (and go back when freed)
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept up to this


def retain_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Sets glibc's thresholds for this process; returns whether they were set (False: not glibc,
    or ``TORCHREC_FUSION_MALLOC=default``).

    Example::

        import platform
        assert retain_freed_memory() == (platform.libc_ver()[0] == "glibc"
                                         and os.environ.get("TORCHREC_FUSION_MALLOC") != "default")
    """
    if os.environ.get("TORCHREC_FUSION_MALLOC") == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # each returns 1 on success; both: setting one turns off glibc's dynamic adjustment of the other
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold))
