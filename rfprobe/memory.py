"""Handing freed memory back to the operating system between the rounds of a long loop."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_libc = None


def release_free_memory() -> None:
    """glibc's `malloc_trim(0)`: return the heap's free pages to the OS (a no-op elsewhere). A loop that frees
    large temporaries each round while keeping small results grows glibc's heap round after round (the freed
    blocks sit between live ones, and glibc raises its mmap threshold after each large free), so the peak
    resident memory keeps rising; trimming once per round keeps it flat. Written by hand: no library exposes it."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
