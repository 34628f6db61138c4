import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
