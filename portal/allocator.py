"""Fixed C allocator thresholds for the long-running processes (web and task workers).

glibc hands the free memory at the top of its heap back to the kernel once it exceeds a
trim threshold, and it raises that threshold as the process runs to twice the largest
mmap'ed block freed so far: about 2 MB in a worker that reads stored objects. Reading,
decrypting and hashing a 0.5 MB instance allocates and frees about 1.5 MB, so nearly
every object trimmed the heap and grew it again, and each grown page was faulted in and
zeroed anew: 140 page faults per CT slice, half the cost of its read. Fixed thresholds
end that churn. Blocks of 4 MB and more are still mmap'ed and returned when freed, and a
free top of heap above 32 MB is still trimmed, so a worker does not hoard memory.
"""

from __future__ import annotations

import ctypes
import os

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 32 * 1024 * 1024
MMAP_THRESHOLD = 4 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set the thresholds; True if they were set (glibc only, and not tuned by the operator)."""
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the operator's own tuning wins
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # musl and others: their allocators do not trim this way
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
