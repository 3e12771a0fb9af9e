"""Ids read from a bulk random buffer stay unique across threads and forked processes."""

from __future__ import annotations

import os
import re
import threading

from relay.ids import random_hex
from relay.store import new_id


def test_ids_are_unique_across_threads():
    found: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        into.extend(random_hex(16) for _ in range(3000))  # several refills of each thread's buffer

    threads = [threading.Thread(target=take, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for into in found for value in into]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in every)
    assert len(set(every)) == len(every)


def test_a_forked_child_does_not_repeat_its_parents_ids():
    random_hex(16)  # the parent's buffer now holds unread bytes, which the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, " ".join(random_hex(16) for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [random_hex(16) for _ in range(4)]
    assert len(child) == 4
    assert not set(child) & set(parent)


def test_delivery_ids_begin_with_the_arrival_time():
    assert new_id(1.0).startswith(f"{1000:012x}")
    assert len(new_id()) == 32
