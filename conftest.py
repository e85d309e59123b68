"""Notebooks under nbval (``make test``): skips, a check on what each cell shows, executed copies.

Notebooks that read Fashion-MNIST skip, with the reason, when no copy of it is on this machine.
A cell that writes to stderr, raises, or shows text naming a Warning fails (``lib.notebook.noisy_outputs``).
Each notebook nbval ran is saved with its outputs to ``build/smoke/executed/`` (nbval saves nothing),
so a failure can be read in JupyterLab without running the notebook again.
"""

from pathlib import Path

import nbformat
import pytest

from lib.data import FASHION_MNIST_HINT, fashion_mnist_available
from lib.notebook import noisy_outputs

EXECUTED = Path(__file__).parent / "build" / "smoke" / "executed"
_ran: dict[Path, nbformat.NotebookNode] = {}


def pytest_collection_modifyitems(config, items):
    if fashion_mnist_available(Path(__file__).parent / "data"):
        return
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb" and "load_dataset(" in path.read_text():
            item.add_marker(pytest.mark.skip(reason=FASHION_MNIST_HINT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    outputs = None
    try:
        result = yield
    finally:
        outputs = getattr(item, "test_outputs", None)  # nbval's cell items keep what the kernel sent
        if outputs is not None:  # kept for the executed copy, failed cells too
            item.cell.outputs = list(outputs)
            _ran[Path(str(item.fspath))] = item.parent.nb
    noisy = noisy_outputs(outputs or [])
    if noisy:
        item.raise_cell_error("the cell showed a warning or an error (lib.notebook.noisy_outputs)", "\n".join(noisy))
    return result


def pytest_sessionfinish(session):
    if _ran:
        EXECUTED.mkdir(parents=True, exist_ok=True)
    for path, nb in _ran.items():
        nbformat.write(nb, EXECUTED / path.name)
