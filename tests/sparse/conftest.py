"""Run the sparse tests on one intra-op thread (restored afterwards).

Their tensors are tiny; on a shared 2-core machine, two spinning torch threads made the
files 3-4x slower (17 s vs 5 s for tests/sparse under load), with no gain when idle.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
