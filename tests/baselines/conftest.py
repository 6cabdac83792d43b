"""The baselines' tests run tiny tensors: one intra-op thread avoids OpenMP spin-waiting when the
(shared, 2-core) machine is loaded, which otherwise slows them down tenfold."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
