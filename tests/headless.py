"""Headless Chromium and a throwaway JupyterLab server, for tests and for screenshots.

    python tests/headless.py EXECUTED.ipynb OUT.png [--height PX]

starts JupyterLab from this virtualenv on 127.0.0.1 (a free port, a random token, settings and
workspaces in a temporary folder, nothing read from ~/.jupyter) with a copy of EXECUTED.ipynb as
its only file, opens it in headless Chromium, saves a screenshot of what a person would see and
stops the server. ``tests/test_jupyterlab.py`` uses the same pieces and asserts on the page.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

# The flags tests/test_slides.py has always used: no GPU, no sandbox (root in CI), nothing that
# phones home, and a fresh profile per call.
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_HINT = "chromium not found (Debian: apt-get install chromium): the rendering tests need it"


def chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


def chrome(
    url: str,
    profile: Path,
    *args: str,
    size=(1280, 800),
    budget_ms: int = 5000,
    offline: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """One headless Chromium call (``--dump-dom`` and/or ``--screenshot=PATH`` in ``args``).

    ``budget_ms`` of virtual time lets client-side rendering finish before the dump; ``offline``
    makes every host name unresolvable except 127.0.0.1, where a test's own server listens."""
    binary = chromium()
    if binary is None:
        raise RuntimeError(CHROMIUM_HINT)
    command = [
        binary,
        *CHROME_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={budget_ms}",
        *args,
        url,
    ]
    if offline:
        command.insert(1, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout)


def pixels(path: Path) -> tuple[np.ndarray, float]:
    """A screenshot's RGB array and the fraction of pixels that differ clearly from the commonest colour."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    return rgb, float((np.abs(rgb - colours[counts.argmax()]).max(-1) > 40).mean())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab: ``url(path)`` opens a file of its root folder, token included."""

    def __init__(self, process: subprocess.Popen, port: int, token: str, log: Path):
        self.process, self.port, self.token, self.log = process, port, token, log

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{path}?token={self.token}"

    def api(self, path: str, timeout: float = 5) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()


@contextlib.contextmanager
def jupyterlab(root: Path, state: Path, start_timeout: float = 60):
    """Start ``python -m jupyterlab`` on ``root``, wait until its API answers, stop it on exit.

    Settings, workspaces, runtime files and config live under ``state`` so that neither the
    user's ~/.jupyter nor a previous run changes what opens; the update check and news feed are
    off, so the page makes no request beyond 127.0.0.1."""
    port, token = free_port(), secrets.token_hex(16)
    for name in ("config", "runtime", "workspaces"):
        (state / name).mkdir(parents=True, exist_ok=True)
    news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')  # no "get Jupyter news?" toast over the notebook
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "TQDM_DISABLE": "1",
    }
    env.pop("MPLBACKEND", None)
    log = state / "jupyterlab.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                f"--LabApp.user_settings_dir={state / 'settings'}",
                f"--LabApp.workspaces_dir={state / 'workspaces'}",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            cwd=root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lab = Lab(process, port, token, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                lab.api("status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not answer on port {port} within {start_timeout:.0f} s:\n"
                        f"{log.read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        yield lab
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM lets the server shut its kernels down; SIGKILL the group if it does not within 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def screenshot_notebook(notebook: Path, out: Path, size=(1400, 900), budget_ms: int = 20000) -> str:
    """Open an executed notebook in a fresh JupyterLab, screenshot it to ``out``; return the DOM."""
    with tempfile.TemporaryDirectory(prefix="lab-shot-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        shutil.copy2(notebook, root / notebook.name)
        with jupyterlab(root, Path(tmp) / "state") as lab:
            out.parent.mkdir(parents=True, exist_ok=True)
            return chrome(
                lab.url(notebook.name),
                Path(tmp) / "chromium",
                "--dump-dom",
                f"--screenshot={out}",
                size=size,
                budget_ms=budget_ms,
            ).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/headless.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path, help="an executed notebook (e.g. build/fashion_mnist/quick/04_...)")
    parser.add_argument("out", type=Path, help="the screenshot to write (PNG)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900, help="a taller window shows more cells")
    args = parser.parse_args(argv)
    screenshot_notebook(args.notebook, args.out, size=(args.width, args.height))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
