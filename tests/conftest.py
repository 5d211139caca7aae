import logging
import os

import pytest
import torch

# the suite is itself the load that `hwnas profile` refuses to profile under; tests of that refusal set it back
os.environ["HWNAS_MAX_PROFILE_LOAD"] = "inf"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    logging.getLogger("hwnas").setLevel(logging.WARNING)
