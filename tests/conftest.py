"""Test-wide settings: W&B never touches a network, and torch uses few threads on small CI boxes."""

import os

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

# Tests use tiny tensors: one thread avoids oversubscription on small, shared CI machines.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
