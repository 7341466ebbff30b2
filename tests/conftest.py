import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# One parallel exp before any test. On the 2-core AVX-512 Xeon of 2026-12 the first parallel exp of a
# process computed one OpenMP worker's half of the tensor ~1e-4 off in about a third of fresh processes
# (reproduced with torch alone: x.exp_() twice, the first differs; a warm-up exp removes it, a warm-up
# add does not). Without this, whichever test happens to run the session's first torch softmax can
# fail its 1e-5 comparison. See docs/reliability.md.
torch.exp(torch.zeros(1 << 20))


def pm1(K, N, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (K, N), generator=g) * 2 - 1).to(dtype)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: on small tensors a second thread only adds wake-up
    and synchronisation latency (milliseconds per op on a busy 2-core machine). Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
