"""The server's heap, kept from growing edit by edit (glibc's malloc).

glibc serves a large block by mmap, and each time one is freed it raises its mmap threshold to that block's size
(up to 32 MiB). After the first edits, every working tensor of an edit (activations, gradients, the factors
before compression) comes from the heap instead, between the small blocks each stored edit keeps there for good;
what the edit frees is then too scattered to reuse whole or give back. Through HTTP on SmolLM2 the server grew by
about 5 MiB per edit (300 zsRE edits: 1.0 -> 2.5 GiB; a 10,000-edit story would not fit this machine's 24 GB)
against the 0.4 MiB an edit stores. A fixed threshold (which also turns the raising off) keeps large blocks in
mmap, given back when freed: 1.06 GiB after 150 and 200 edits (bench/edit_memory.py has the numbers).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("mend.heap")
M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def fix_mmap_threshold(nbytes: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, nbytes) for this process; 0 leaves glibc's own (raised as blocks are freed).
    Returns whether it was set: False for 0, and where the C library has no mallopt or refuses it (not glibc)."""
    if nbytes <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        log.warning("no mallopt in this C library: the heap may grow with each edit")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, nbytes) == 1
