"""Random hex for request and delivery ids, from the OS's random source read in bulk.

`uuid.uuid4()` makes one `os.urandom` call per id: a system call that also
hands the GIL to another of gunicorn's threads, twice per webhook. Reading
4 KiB at a time per thread makes that one call per few hundred ids; the
bytes are the same kind (the kernel's CSPRNG). A forked child starts with
empty buffers, so no two processes hand out the same bytes.
"""

from __future__ import annotations

import os
import threading

__all__ = ["random_hex"]

_CHUNK = 4096


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.data = b""
        self.position = 0


_buffers = _Buffers()


def _forget_after_fork() -> None:
    global _buffers
    _buffers = _Buffers()


os.register_at_fork(after_in_child=_forget_after_fork)


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as 2 * nbytes lowercase hex digits."""
    buffers = _buffers
    start = buffers.position
    if start + nbytes > len(buffers.data):
        buffers.data = os.urandom(max(_CHUNK, nbytes))
        start = 0
    buffers.position = start + nbytes
    return buffers.data[start : start + nbytes].hex()
