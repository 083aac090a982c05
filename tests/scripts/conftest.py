import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the 2 CI cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
