import pytest

from lib.data import FASHION_MNIST_HINT, fashion_mnist_available
from lib.runs import REPO_ROOT


@pytest.fixture(scope="session")
def fashion_mnist_root():
    """The real data's root, or a skip that says how to get it."""
    if not fashion_mnist_available(REPO_ROOT / "data"):
        pytest.skip(FASHION_MNIST_HINT)
    return REPO_ROOT / "data"
