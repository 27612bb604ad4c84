"""The server's heap, kept from growing edit by edit (glibc's malloc).

glibc serves a large block by mmap, and each time one is freed it raises its mmap threshold to that block's size
(up to 32 MiB). After the first edits, every working tensor of an edit (activations, gradients, the factors
before compression) comes from the heap instead, between the small blocks each stored edit keeps there for good;
what the edit frees is then too scattered to reuse whole or give back. A fixed threshold (which also turns the
raising off) keeps large blocks in mmap, given back when freed.

`python -m bench.edit_memory -n 300 --threads 2 [--mmap-threshold N]`, SmolLM2, 300 zsRE edits through HTTP
(the edits store 0.41 MiB each):
- glibc's own: 1,030 -> 1,848 MiB, about 5 MiB per edit from the 150th on;
- fixed at 128 KiB (the default): 983 -> 1,130 MiB, 0.49 MiB per edit;
- fixed at 1 MiB: 1,006 -> 1,151 MiB; at 4 MiB it grew again (1,110 MiB at 50 edits, 1,374 at 100).
A 10,000-edit story (bench/lifelong_story.py) had its server at 11 GB after 1,974 edits with glibc's own, and at
2.1 GB after replaying those, 2.6 GB at 3,000, with the fix. The price is a page-faulted mmap per large block: the
edit p50 of those runs was about 900 ms at 128 KiB, 820 ms at 1 MiB and 780 ms with glibc's own, on 2 cores shared
with that story, so it is rough.
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
