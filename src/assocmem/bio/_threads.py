"""Thread control for the small batched products of the biological models' rate dynamics."""
from __future__ import annotations

import contextlib

import torch

#: below this many multiply-adds per product, one thread is used for the integration loop
SMALL_WORK = 4_000_000


@contextlib.contextmanager
def single_thread_if_small(work: int):
    """Run the block with one intra-op thread when each product is small (``work`` multiply-adds):
    such products gain nothing from more threads, and on a busy machine synchronising two threads
    per operation costs 10-100 times the arithmetic. The previous setting is restored on exit."""
    n = torch.get_num_threads()
    if work >= SMALL_WORK or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
