"""Notebooks that read Fashion-MNIST skip, with the reason, when no copy of it is on this machine."""
from pathlib import Path

import pytest

from lib.data import FASHION_MNIST_HINT, fashion_mnist_available


def pytest_collection_modifyitems(config, items):
    if fashion_mnist_available(Path(__file__).parent / "data"):
        return
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb" and "load_dataset(" in path.read_text():
            item.add_marker(pytest.mark.skip(reason=FASHION_MNIST_HINT))
