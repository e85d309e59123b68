"""`make lab`'s JupyterLab shows an executed notebook: its cells, its outputs and its figures.

What this proves: ``python -m jupyterlab`` from this virtualenv starts (127.0.0.1, a free port, a
random token, a temporary root holding notebook 01 executed by papermill with the smoke profile),
answers its API, and JupyterLab's own client code, run by headless Chromium, renders every cell of
that notebook, a printed output and every PNG figure as an ``<img>`` (read from the DOM after a
virtual-time budget); the screenshot is not blank; opening the notebook starts a session on the
project's ``python3`` kernel, the one installed into this virtualenv; the server and its kernel
are stopped afterwards, on failure too.
What it does not prove: that the kernel runs code from the browser (nothing is executed there),
or that the page looks right to a person (the screenshot is checked for ink, not read).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat

from headless import chrome, jupyterlab, pixels

CELL = re.compile(r'<div[^>]*class="[^"]*\bjp-Notebook-cell\b')
FIGURE = re.compile(r'<img[^>]*src="data:image/png;base64,')


def test_jupyterlab_renders_the_executed_notebook(chromium_path, executed_01, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy2(executed_01, root / executed_01.name)
    cells = nbformat.read(executed_01, as_version=4).cells
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    figures = sum("image/png" in output.get("data", {}) for output in outputs)
    printed = next(output["text"] for output in outputs if output.get("name") == "stdout")
    assert figures >= 3, "notebook 01 should display its figures (is MPLBACKEND=Agg set for the kernel?)"

    shot = tmp_path / "jupyterlab.png"
    with jupyterlab(root, tmp_path / "state") as lab:
        dom = chrome(
            lab.url(executed_01.name),
            tmp_path / "chromium",
            "--dump-dom",
            f"--screenshot={shot}",
            size=(1400, 2400),
            budget_ms=60000,
        ).stdout
        sessions = json.loads(lab.api("sessions"))
        spec = json.loads(lab.api("kernelspecs"))["kernelspecs"]["python3"]["spec"]
    assert lab.process.poll() is not None, "the JupyterLab server is still running"
    assert not list((tmp_path / "state" / "runtime").glob("kernel-*.json")), "a kernel outlived the server"

    assert 'id="jp-main-dock-panel"' in dom, "JupyterLab's shell never rendered"
    assert len(CELL.findall(dom)) == len(cells), f"{len(CELL.findall(dom))} of {len(cells)} cells rendered"
    assert html.escape(printed.splitlines()[0][:40]) in dom, "the first printed output is not on the page"
    assert len(FIGURE.findall(dom)) == figures, f"{len(FIGURE.findall(dom))} of {figures} figures rendered"

    assert [s["kernel"]["name"] for s in sessions if s["path"] == executed_01.name] == ["python3"]
    assert Path(spec["argv"][0]).is_relative_to(sys.prefix), f"kernel python3 is {spec['argv'][0]}, not this venv's"

    image, ink = pixels(shot)
    assert image.std() > 10, "the screenshot is blank"
    assert ink > 0.05, f"only {ink:.3f} of the screenshot is not background"
