"""Run folders: what a training run leaves on disk, written so that no finished run is ever lost.

A run folder holds::

    config.json     settings, schedule, model signature, data source, command, environment
    metrics.csv     one row per epoch (the same rows in history.json)
    checkpoints/    epoch_NNNN.pt, the last K kept (and epoch_NNNN_step_BBBBBB.pt after a stop inside an epoch)
    model.pt        the final weights (the EMA weights when EMA is on)
    metrics.json    written last: a folder with it holds a finished run
    .lock           held (filelock's FileLock) by the one process writing here, with its pid; removed when it is done

Every file is written to a temporary name unique to the process and renamed into place, so a
reader never sees half a file and a kill never leaves one behind under the real name. A write
that fails (disk full, no permission) removes its temporary file and becomes one line naming the
folder. ``--overwrite`` sets the old run aside in ``.replaced/`` and deletes it only once the new
run has written its first checkpoint; a new run that fails before that puts the old one back.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable

import filelock
import torch

from .profiles import added_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = "checkpoints"
ASIDE = ".replaced"
LOCK = ".lock"
RUN_FILES = ("config.json", "metrics.json", "metrics.csv", "history.json", "model.pt", CHECKPOINTS)
OURS = (*RUN_FILES, LOCK, ASIDE, "preflight.json", ".preflight")  # what a folder with a run of ours holds
NOTEBOOK_ENV = "EFFNETV2_NOTEBOOK"  # set by lib.notebook.start: which notebook, with which parameters
MAKE_ENV = "EFFNETV2_MAKE"  # set by the Makefile: which make target ran the notebooks


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class RunFolderError(TrainingError):
    """A run folder that cannot be used or written; the message names it and says what to do."""


def resolve(path: str | os.PathLike) -> Path:
    """Relative paths are relative to the repository, wherever Python or the kernel was started."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def display_path(path: str | os.PathLike) -> str:
    """Repository-relative when inside it: results say ``runs/...``, not one machine's absolute path."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- writing files


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a process-unique temporary name, then rename it to ``path``.

    A failed write removes the temporary file and becomes one line naming the file and folder.
    torch.save reports a full disk as a RuntimeError without an errno ("unexpected pos ..."), so
    the free space is read before the partial file goes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        full = _free_bytes(path.parent) < 1 << 20
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, RuntimeError) and not full and "inline_container" not in str(e):
            raise
        reason = (
            _reason(e)
            if isinstance(e, OSError) and not full
            else _reason(OSError(errno.ENOSPC, ""))
            if full
            else f"the write failed ({' '.join(str(e).split())[:120]})"
        )
        raise RunFolderError(f"cannot write {path.name} in {path.parent}: {reason}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return (
            "no space left on the device; free some space and run again (--resume continues from the last checkpoint)"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied; choose a writable --out"
    return error.strerror or str(error)


def write_json(path: Path, payload) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(payload, indent=2, default=str) + "\n"))


def write_csv(path: Path, rows: list[dict]) -> None:
    def write(p: Path) -> None:
        with open(p, "w", newline="") as f:
            fields = list(
                dict.fromkeys(key for row in rows for key in row)
            )  # rows may add columns (a size change's readings)
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    if rows:
        atomic_write(path, write)


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda p: torch.save(obj, p))


LOCK_WAIT = 0.5  # seconds a second writer tries before it is refused


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _ours(name: str) -> bool:
    """A file or folder a run of ours writes (a write cut off by SIGKILL included)."""
    return name in OURS or (name.endswith(".partial") and any(name.startswith(f".{n}.") for n in OURS))


# ---------------------------------------------------------------- what produced a run


def environment() -> dict:
    """Hardware and software versions, recorded with every result."""
    import torchvision

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def cpu_name() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def cpu_flags() -> str:
    """The vector extensions that decide CPU speed here (an AVX-512 machine trains far faster than an
    AVX2 one), so a time read from a result says on what it was measured."""
    for line in _cpuinfo():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return " ".join(sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")))
    return ""


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def command() -> str:
    """How this process was started, as a command someone can run again.

    A notebook run names the notebook and its parameters (set by ``lib.notebook.start``) and, under
    ``make reproduce``, the make target; a terminal run names ``python -m lib.train ...``.
    """
    notebook, make = os.environ.get(NOTEBOOK_ENV), os.environ.get(MAKE_ENV)
    if notebook:
        return f"{make}  # {notebook}" if make else f"papermill {notebook}"
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main is not None and main.name:
        return shlex.join(["python", "-m", main.name.removesuffix(".__main__"), *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def finished_runs(*roots: str | os.PathLike) -> dict[Path, Path]:
    """Every run's ``metrics.json`` under ``roots`` (laid out ``<dataset>/<profile>/<experiment...>/``),
    keyed by its folder relative to its root. A run under a later root replaces the same run under an
    earlier one: notebook 07 reads the records the repository keeps (``figures/records/``), then this
    machine's ``runs/``."""
    found = {}
    for root in map(resolve, roots):
        for path in sorted(root.glob("*/*/**/metrics.json")):
            found[path.parent.relative_to(root)] = path
    return dict(sorted(found.items()))


# Settings added after runs were made, with the value every earlier run had (``setting(added=True)``):
# left out of the folder name at that value, so an existing run keeps its folder (``finished_with``
# reads them as defaults).
ADDED_SETTINGS = added_settings()


def settings_key(identity: dict) -> str:
    """A folder name for one set of settings: ``seed<N>-<8 hex digits of the settings>``."""
    named = {k: v for k, v in identity.items() if not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}
    text = json.dumps(named, sort_keys=True, default=str)
    return f"seed{identity.get('seed', 0)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- the folder


class RunFolder:
    """One run's folder: checks before work, a lock while writing, checkpoints, outputs."""

    def __init__(self, path: str | os.PathLike):
        self.given = str(path)
        self.path = resolve(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def finished(self) -> bool:
        return (self.path / "metrics.json").is_file()

    def checkpoints(self) -> list[Path]:
        return sorted((self.path / CHECKPOINTS).glob("epoch_*.pt"))

    def read_json(self, name: str):
        return json.loads((self.path / name).read_text())

    def write_json(self, name: str, payload) -> None:
        write_json(self.path / name, payload)

    def write_csv(self, name: str, rows: list[dict]) -> None:
        write_csv(self.path / name, rows)

    def save_torch(self, name: str, obj) -> None:
        save_torch(self.path / name, obj)

    # -- before any work

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, in one line, what cannot work: a file in the way, a finished run without
        ``--overwrite``, an unfinished one without ``--resume``, ``--resume`` with nothing to resume."""
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite exclude each other: choose one")
        self.check_path()
        self.recover()
        found = self.checkpoints()
        if overwrite:
            return
        if self.finished and resume:
            raise RunFolderError(f"{self.path} is already finished; nothing to resume (--overwrite starts again)")
        if self.finished:
            raise RunFolderError(
                f"{self.path} holds a finished run (metrics.json); pass --overwrite to "
                f"replace it or choose another --out"
            )
        if found and not resume:
            raise RunFolderError(
                f"{self.path} holds an unfinished run ({found[-1].name}); pass --resume to "
                f"continue it or --overwrite to start again"
            )
        if resume and not found:
            raise RunFolderError(f"--resume: no checkpoint in {self.path / CHECKPOINTS}")

    def check_path(self) -> None:
        """The folder, or where it would be made, is not a file, and is not someone else's folder.

        An empty ``--out`` (``--out $OUT`` with the variable unset) would resolve to the repository
        root, and a run's files would land among the project's; a folder that holds files but no
        run of ours (the repository, a home folder) is refused whatever the flags, since
        ``--overwrite`` would set its files aside and delete them.
        """
        if not self.given.strip():
            raise RunFolderError(
                f"--out is empty ({repr(self.given) if not self.given else 'only spaces'}): name the run's folder, e.g. --out runs/my-run "
                f"(--out $OUT with OUT unset gives an empty one)"
            )
        for parent in (self.path, *self.path.parents):
            if parent.exists() and not parent.is_dir():
                raise RunFolderError(f"--out {self.path}: {parent} is a file, not a folder")
        try:
            names = [p.name for p in self.path.iterdir()] if self.path.is_dir() else []
        except OSError as e:
            raise RunFolderError(f"cannot read {self.path}: {_reason(e)}") from None
        if names and not any(_ours(name) for name in names):
            shown = sorted(names, key=lambda n: (n.startswith("."), n.lower()))
            listed = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
            raise RunFolderError(
                f"--out {self.path} is not empty and holds no training run ({listed}); "
                f"choose a new or empty folder, e.g. --out runs/my-run"
            )

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock (filelock's FileLock, an flock) while this process writes into it,
        with the holder's pid written into the file: a second writer is refused with that pid. The
        holder removes the file when it is done; the operating system releases the lock if the holder
        dies (the file then stays, and the next run takes it). A writer that opened a file its holder
        was just removing waits a moment for the next one instead of being refused (``LOCK_WAIT``)."""
        path = self.path / LOCK
        held = filelock.FileLock(path, timeout=LOCK_WAIT, fallback_to_soft=False, on_acquired=_write_pid)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            held.acquire()
        except filelock.Timeout:
            raise RunFolderError(
                f"{self.path} is in use by another training process (pid {_read_pid(path)}); "
                f"wait for it to finish or choose another --out"
            ) from None
        except OSError as e:
            raise RunFolderError(f"cannot write in {self.path}: {_reason(e)}") from None
        try:
            yield self
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: a process that opened it meanwhile sees it gone
            held.release()

    # -- replacing a run without losing it

    def set_aside(self) -> bool:
        """Move the old run's files into ``.replaced/`` (``--overwrite``); True if there were any."""
        aside = self.path / ASIDE
        present = [name for name in RUN_FILES if (self.path / name).exists()]
        if not present:
            return False
        try:
            aside.mkdir(exist_ok=True)
            for name in present:
                os.replace(self.path / name, aside / name)
        except OSError as e:
            raise RunFolderError(f"cannot set the old run in {self.path} aside: {_reason(e)}") from None
        return True

    def drop_aside(self) -> None:
        """The new run has a checkpoint: the old one can go."""
        shutil.rmtree(self.path / ASIDE, ignore_errors=True)

    def recover(self) -> bool:
        """Put a run set aside back if its replacement never wrote a checkpoint (killed or failed early)."""
        aside = self.path / ASIDE
        if not aside.is_dir() or self.checkpoints():
            if aside.is_dir():
                self.drop_aside()
            return False
        for name in RUN_FILES:
            if (aside / name).exists():
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                os.replace(aside / name, target)
        shutil.rmtree(aside, ignore_errors=True)
        return True

    # -- checkpoints

    def save_checkpoint(self, state: dict, keep: int) -> Path:
        """``epoch_NNNN.pt`` after epoch NNNN, the last ``keep`` kept; ``epoch_NNNN_step_BBBBBB.pt``
        for a run stopped after batch BBBBBB of the next epoch (``state["position"]``). That one sorts
        between the two epochs' and removes no epoch's checkpoint; the next checkpoint replaces it."""
        folder = self.path / CHECKPOINTS
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot write in {folder}: {_reason(e)}") from None
        position = state.get("position")
        path = folder / (
            f"epoch_{state['epoch']:04d}" + (f"_step_{position['batches']:06d}" if position else "") + ".pt"
        )
        save_torch(path, state)
        for old in self.checkpoints():
            if "_step_" in old.name and old.name < path.name:
                old.unlink()
        for old in self.checkpoints()[:-keep] if position is None else []:
            old.unlink()
        return path

    def load_checkpoint(self, map_location, log=print) -> tuple[Path, dict]:
        """The newest checkpoint that loads, trying newest to oldest. An unreadable one is named and
        kept for inspection as ``<name>.unreadable`` (never deleted, never overwritten by the resumed run)."""
        bad = []
        for path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=False)
                if not isinstance(state, dict) or not {"epoch", "model", "optimizer"} <= set(state):
                    raise ValueError("not a checkpoint of this trainer")
            except Exception as e:  # truncated, empty, garbage: every loader error type
                reason = " ".join(f"{type(e).__name__}: {e}".split())[:160]
                kept = path.with_name(path.name + ".unreadable")
                with contextlib.suppress(OSError):
                    os.replace(path, kept)
                log(f"skipping {path.name}: cannot be loaded ({reason}); kept as {kept.name}")
                bad.append(path.name)
                continue
            return path, state
        raise RunFolderError(
            f"--resume: no readable checkpoint in {self.path / CHECKPOINTS} "
            f"(unreadable: {', '.join(bad) or 'none'}); --overwrite starts again"
        )

    # -- reuse

    def finished_with(self, identity: dict, defaults: dict) -> dict | None:
        """The metrics of a finished run made with the settings ``identity``, or None.

        A setting added since that run was made counts as its default (``defaults``); a setting
        that no longer exists is ignored."""
        if not self.finished or not (self.path / "config.json").is_file():
            return None
        try:
            saved = self.read_json("config.json")["identity"]
            metrics = self.read_json("metrics.json")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        wanted = json.loads(json.dumps(identity, default=str))
        then = json.loads(json.dumps(defaults, default=str))
        then.update({k: v for k, v in saved.items() if k in wanted})
        return metrics if then == wanted else None


__all__ = [
    "REPO_ROOT",
    "RunFolder",
    "RunFolderError",
    "TrainingError",
    "resolve",
    "atomic_write",
    "write_json",
    "write_csv",
    "save_torch",
    "environment",
    "command",
    "settings_key",
    "finished_runs",
    "cpu_name",
    "cpu_flags",
    "display_path",
]
