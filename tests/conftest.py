"""Shared fixtures. Tests never touch the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd3():
    from flowalign.models.tiny import tiny_sd3_pipeline

    return tiny_sd3_pipeline(seed=0)


@pytest.fixture()
def sd3_model(tiny_sd3):
    from flowalign.models.sd3 import SD3Model

    return SD3Model(tiny_sd3)
