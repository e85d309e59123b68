"""No executed notebook shows a warning or an error: nothing on stderr, no error output, no text
naming a Warning (``lib.notebook.noisy_outputs``).

``make test``: nbval executes every notebook once; conftest.py fails the nbval cell that shows one,
with the text, and saves the executed copies to build/smoke/executed/. ``make reproduce``: the
notebooks it executed into build/<dataset>/<profile>/ are read here, when there are any.
"""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_output

from lib.notebook import noisy_outputs
from lib.runs import REPO_ROOT

REPRODUCED = [p for p in sorted(REPO_ROOT.glob("build/*/*/[0-9][0-9]_*.ipynb")) if p.parts[-3] != "smoke"]


def test_noisy_outputs_names_stderr_errors_and_warnings():
    clean = [
        new_output("stream", name="stdout", text="54000 train images\n"),
        new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}),
        new_output("execute_result", data={"text/plain": "0.91"}, execution_count=3),
    ]
    assert noisy_outputs(clean) == []
    noisy = [
        new_output("stream", name="stderr", text="epoch 1/2:  50%|#####     | 1/2"),
        new_output("error", ename="ValueError", evalue="unknown profile 'fast'", traceback=[]),
        new_output("stream", name="stdout", text=["all good\n", "FutureWarning: the default will change\n"]),
        new_output("execute_result", data={"text/plain": "[<UserWarning at 0x1>]"}, execution_count=4),
        new_output("stream", name="stderr", text=" 100%|##########| 2/2\n"),
    ]
    assert noisy_outputs(noisy) == [
        "stderr: 'epoch 1/2:  50%|#####     | 1/2 100%|##########| 2/2'",
        "error: ValueError: unknown profile 'fast'",
        "stream names a warning: 'FutureWarning: the default will change'",
        "execute_result names a warning: '[<UserWarning at 0x1>]'",
    ]


@pytest.mark.parametrize(
    "path",
    REPRODUCED
    or [
        pytest.param(
            None, marks=pytest.mark.skip(reason="no notebooks executed by make reproduce in build/<dataset>/<profile>/")
        )
    ],
    ids=lambda p: str(p.relative_to(REPO_ROOT)) if p else "none",
)
def test_notebooks_executed_by_make_reproduce_show_no_warning(path):
    cells = nbformat.read(path, as_version=4).cells
    found = [
        f"cell {i} ({cell.source.splitlines()[0][:60] if cell.source else ''}): {line}"
        for i, cell in enumerate(cells)
        for line in noisy_outputs(cell.get("outputs", []))
    ]
    assert not found, f"{path.relative_to(REPO_ROOT)} shows a warning or an error:\n" + "\n".join(found)
