"""The C heap's freed memory given back to the system before a long pass (glibc's ``malloc_trim``).

Loading a checkpoint reads each tensor into a NumPy buffer that is freed once its variable holds it; glibc keeps
such freed memory in its heap (about 0.04 GB after loading the 135M-parameter bench models) instead of returning
it, and TensorFlow's allocator, which the pass allocates from, never reuses it. Given back before a long pass
(``encoder.trace``) and after loading (``encoder.checkpoints``), it is not part of the process's peak. Where the C
library has no ``malloc_trim`` (not glibc) nothing is done.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the process's C library has none."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_heap() -> None:
    """Give the pages the C heap holds free back to the system (``malloc_trim(0)``); no numbers change."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
