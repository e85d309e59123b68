"""The GPU evidence in one call: the CUDA tests, the paper preflights and a short real training, into one JSON.

    make gpu-data                      # here, once: the four Fashion-MNIST .gz files the device needs
    make gpu-check OUT=DIR             # on CUDA: the check, 8 minutes at most; without CUDA: a dry run
    python benchmarks/gpu_check.py --out DIR [--smoke] [--budget SECONDS] [--data-root DIR] [--commit SHA]

Why one prepared script: a GPU is lent to some tasks only, for 15 minutes of device time including
its start, so the check must run in one call that cannot overrun. It runs, each part as a child
process with its own time limit (what is left of ``--budget`` when it starts; a part that would not
fit is skipped and says so), in this order:

1. ``training``: the ``paper`` profile on the real Fashion-MNIST files, built as ``lib.train`` builds
   it (V2-S, batch 128, bf16 autocast, inductor with static shapes), on one model through all three
   stage sizes: at each size a few timed optimizer steps (``lib.preflight.time_stage``; the first
   one compiles), then real training steps (``lib.train.train_one_epoch``: one whole epoch at the
   first stage's 28 px, bounded steps at 50 and 80 px) and, after the first stage, the validation
   accuracy. It reports images/s and peak memory per size, the compilations and graph breaks, and
   the projected hours of the full 100-epoch run beside the README's estimate (counted FLOPs at an
   assumed 10% of peak, ``lib.preflight.gpu_hours``) and the share of peak the measurement implies;
2. ``preflight_fashion_mnist``: ``python -m lib.preflight --dataset fashion_mnist --profile paper``;
3. ``tests``: the tests that take the ``device`` fixture (``pytest -m on_device``: device-resident data
   and ``DeviceLoader``, RandAugment against the CPU, bf16/fp16 autocast, inductor with one
   compilation per size, accumulation, bit-exact resume, the preflight), which run on CUDA there;
4. ``preflight_cifar10``: the same for CIFAR-10's V2-M (128/150/200 px) on files in the real format
   written by ``tests/formats.py``; with the profile's inductor when enough of the budget is left,
   else in eager mode, and the JSON says which.

Everything measured goes to ``OUT/gpu_check.json`` (written again after every part, so a stopped
call keeps what was done) and what was printed to ``OUT/gpu_check.log``: two files, as the device
tool brings back at most 8. Where torch sees no CUDA device it is a dry run: the same parts on the
CPU with a tiny network, a few hundred images and a tracing compile backend (``aot_eager``), which
proves the script, not a GPU figure. ``--smoke`` shrinks the dry run further for ``make test``.

The device call (the device tool's ``run``, from the repository root; the tool sends the checkout
the session started in, so run ``make gpu-data`` there first, and type the commit in, since
``.git`` may not travel)::

    command: if command -v make >/dev/null; then make gpu-check OUT=$OUT COMMIT=<sha>; else python3 benchmarks/gpu_check.py --out $OUT --commit <sha>; fi
    carry:   ["build/gpu-data"]
    timeout_s: 600

There it runs on the machine's own ``python3`` (its torch, no virtualenv, nothing installed): the
Makefile's ``GPU_PYTHON`` is ``.venv/bin/python`` only where that exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # importable without installing (the device has no .venv)
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

BUDGET = 450  # seconds for the whole check on CUDA: under the 8 minutes, with margin
DRY_BUDGET = 900  # a dry run on a busy 2-core CPU
GPU_DATA = REPO / "build" / "gpu-data"
RESULT, LOG = "gpu_check.json", "gpu_check.log"
TINY = {"width_mult": 0.25, "depth_mult": 0.1, "small_input": True}
# On CUDA each part gets at most this many seconds (and at least the second number, or it is skipped):
# the training's three inductor compiles come first, the V2-M preflight (three more) gets what is left.
PARTS = {"training": (240, 60), "preflight_fashion_mnist": (75, 30), "tests": (120, 30), "preflight_cifar10": (200, 25)}
CIFAR_COMPILE_SECONDS = 150  # less than this left: the V2-M preflight runs eager rather than being cut off
RESERVE = 10  # seconds kept for writing the results


DEVICE_TESTS = ("tests/test_data.py", "tests/test_augment.py", "tests/test_gpu_recipe.py")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each part does: the real check on CUDA, a dry run, or the smoke test's."""

    model_overrides: dict | None  # None: the profile's network
    batch_size: int | None  # None: the profile's
    limit: int | None  # images per split; None: all
    timed_steps: int  # timed optimizer steps per size, after the one that compiles
    first_stage_steps: int | None  # training steps at the first size; None: one whole epoch
    later_steps: int  # training steps at each later size
    compile: str | None  # None: the profile's (inductor on CUDA, off on a CPU)
    preflight_compile: str | None  # the same for the preflights
    preflight_batch: int | None  # None: the profile's (the preflight takes 8 on a CPU)
    test_files: tuple[str, ...]  # where the tests that take ``device`` are
    test_filter: str | None  # pytest -k, to run a few of them only


REAL = Sizes(
    None,
    None,
    None,
    timed_steps=30,
    first_stage_steps=None,
    later_steps=100,
    compile=None,
    preflight_compile=None,
    preflight_batch=None,
    test_files=DEVICE_TESTS,
    test_filter=None,
)
DRY = Sizes(
    TINY,
    32,
    1024,
    timed_steps=3,
    first_stage_steps=None,
    later_steps=8,
    compile="aot_eager",
    preflight_compile="aot_eager",
    preflight_batch=None,
    test_files=DEVICE_TESTS,
    test_filter=None,
)
# The smoke test proves the script: dynamo's graph capture without aot_eager's backward trace in the
# training (compilations and graph breaks are still counted), no compile and batch 2 in the preflights.
SMOKE = Sizes(
    TINY,
    16,
    128,
    timed_steps=2,
    first_stage_steps=4,
    later_steps=2,
    compile="eager",
    preflight_compile=None,
    preflight_batch=2,
    test_files=DEVICE_TESTS[:1],
    test_filter="device_loader",
)


# ---------------------------------------------------------------- printing and the record


class Record:
    """The JSON and the log: every line printed goes to both the terminal and OUT/gpu_check.log."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.data, self.scratch = out, {}, None
        self.log_file = open(out / LOG, "w", buffering=1)
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.log_file.write(line + "\n")

    def write(self) -> None:
        """Paths in the repository relative to it and the scratch folder as $SCRATCH: the record is
        committed (figures/records/gpu/), and one machine's folders mean nothing on another."""
        text = json.dumps(self.data, indent=1, default=str).replace(str(REPO) + "/", "")
        if self.scratch is not None:
            text = text.replace(str(self.scratch), "$SCRATCH")
        tmp = self.out / f".{RESULT}.partial"
        tmp.write_text(text + "\n")
        os.replace(tmp, self.out / RESULT)


def commit(given: str | None) -> tuple[str, str]:
    """The commit checked, and where it was read: ``--commit``/``COMMIT=`` (the device may have no
    .git), else git, else unknown."""
    if given:
        return given, "given"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if sha:
            return sha + ("-dirty" if dirty else ""), "git"
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown", "unknown"


def environment(cuda: bool) -> dict:
    from lib.runs import environment as run_environment

    env = {
        **run_environment(),
        "cuda_available": cuda,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_capability=list(torch.cuda.get_device_capability(0)),
            gpu_multiprocessors=props.multi_processor_count,
            gpu_count=torch.cuda.device_count(),
        )
        try:
            env["driver"] = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


# What the library calls on CUDA only (lib/device.py, lib/distributed.py, lib/preflight.py), which a dry
# run on a CPU cannot reach: looked up in this torch, so a missing one is a line, not a traceback mid-check.
CUDA_PATH_APIS = (
    "torch.cuda.is_bf16_supported",
    "torch.cuda.get_device_name",
    "torch.cuda.synchronize",
    "torch.cuda.reset_peak_memory_stats",
    "torch.cuda.max_memory_allocated",
    "torch.amp.GradScaler",
    "torch.OutOfMemoryError",
    "torch.compile",
    "torch._dynamo.lookup_backend",
    "torch._dynamo.utils.counters",
    "torch.nn.SyncBatchNorm.convert_sync_batchnorm",
    "torch.use_deterministic_algorithms",
)


def compatibility() -> list[str]:
    """What this torch lacks that the library uses on CUDA, one line each (empty: nothing missing)."""
    import importlib

    notes = []
    for name in CUDA_PATH_APIS:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            notes.append(f"torch {torch.__version__} has no {name}, which the library calls on CUDA")
    return notes


# ---------------------------------------------------------------- child processes with a time limit


def run_child(
    record: Record, argv: list[str], timeout: float, env: dict | None = None, tail: list | None = None
) -> tuple[int | None, float]:
    """Run ``argv`` with its output in the log (its last lines also in ``tail``); kill its process
    group after ``timeout`` seconds. Returns (exit code or None when killed, seconds)."""
    started = time.perf_counter()
    tail = tail if tail is not None else []
    child = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )

    def pump():
        for line in child.stdout:
            record.say("  | " + line.rstrip("\n"))
            tail.append(line.rstrip("\n"))
            del tail[:-20]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = child.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        code = None
    reader.join(timeout=10)
    return code, time.perf_counter() - started


def child_env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {
        "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
        "TQDM_DISABLE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


# ---------------------------------------------------------------- the parts


def find_fashion_mnist(given: str | None) -> Path | None:
    """The data root holding the four files (``--data-root``, build/gpu-data, data/), or None
    (lib.data's own search may still find a system copy under data/)."""
    from lib.data import SYSTEM_FASHION_MNIST, _find_idx_files

    for root in [Path(given)] if given else [GPU_DATA, REPO / "data"]:
        if _find_idx_files(root / "FashionMNIST" / "raw") is not None:
            return root
    if not given and _find_idx_files(SYSTEM_FASHION_MNIST) is not None:
        return REPO / "data"
    return None


def paper_config(dataset: str, sizes: Sizes, data_root: Path, **more):
    from lib.profiles import config_for

    overrides = {"data_root": str(data_root), "download": False, **more}
    if sizes.model_overrides is not None:
        overrides["model_overrides"] = sizes.model_overrides
    if sizes.batch_size is not None:
        overrides["batch_size"] = sizes.batch_size
    if sizes.limit is not None:
        overrides["limit"] = sizes.limit
    if sizes.compile is not None:
        overrides["compile"] = sizes.compile
    return config_for("paper", dataset, **overrides)


def part_training(args, sizes: Sizes, result_path: Path, deadline: float) -> None:
    """The paper recipe on the real files, one model through all three sizes (see the docstring)."""
    from lib import device as dev
    from lib import distributed
    from lib.data import known_train_images
    from lib.preflight import GPU_PEAKS, gpu_hours, projected_train_images, time_stage, training_flops
    from lib.progressive import schedule_from_spec
    from lib.runs import RunFolder
    from lib.train import build, evaluate, load_data, train_one_epoch

    result = {"status": "running", "stages": []}

    def save():
        result_path.write_text(json.dumps(result, indent=1, default=str))

    config = paper_config("fashion_mnist", sizes, Path(args.data_root))
    schedule = schedule_from_spec(config.schedule, config.epochs)
    ctx = distributed.setup(config.device)
    data = load_data(config, ctx)
    t = build(config, schedule, data, ctx)
    full = dataclasses.replace(config, limit=None)  # project for the full training split
    images_per_epoch = projected_train_images(full, data.name, len(data.train)) // config.batch_size * config.batch_size
    result.update(
        model=config.model,
        model_overrides=config.model_overrides,
        batch_size=config.batch_size,
        precision=t.precision.describe(),
        compile=t.compiler.describe(),
        device=str(ctx.device),
        device_name=dev.device_name(ctx.device),
        data_source=data.source,
        train_images=len(data.train),
        val_images=len(data.val),
        projected_images_per_epoch=images_per_epoch,
        schedule=[{"image_size": s.image_size, "epochs": s.epochs} for s in schedule],
    )
    print(
        f"training: {config.model} on {data.name} ({len(data.train):,} training images from {data.source}), "
        f"{ctx.device} ({dev.device_name(ctx.device)}), batch {config.batch_size}, {t.precision.describe()}, "
        f"{t.compiler.describe()}",
        flush=True,
    )
    save()
    folder = RunFolder(result_path.parent / "training-run")
    first_compile = None
    for stage in schedule:
        left = deadline - time.time()
        if first_compile is not None and left < 1.5 * first_compile + 10:
            result["stages"].append(
                {
                    "stage": stage.index,
                    "image_size": stage.image_size,
                    "status": "skipped",
                    "reason": f"{left:.0f} s left of the budget, the first size compiled in {first_compile:.0f} s",
                }
            )
            print(f"training: stage {stage.index} at {stage.image_size} px skipped ({left:.0f} s left)", flush=True)
            save()
            continue
        row = time_stage(t, stage, sizes.timed_steps, config.batch_size, images_per_epoch, "")
        first_compile = first_compile if first_compile is not None else row["first_step_seconds"]
        row = {
            "status": "done",
            **{
                f"step_{k}" if k in ("images_per_second", "peak_memory_bytes") else k: v
                for k, v in row.items()
                if k not in ("batch_note", "run_batch_size")
            },
        }
        wanted = (
            (len(t.train_loader) if sizes.first_stage_steps is None else sizes.first_stage_steps)
            if stage.index == 0
            else sizes.later_steps
        )
        affordable = int(max(0.0, deadline - time.time() - 15) / (2 * row["seconds_per_step"]))
        steps = max(1, min(wanted, len(t.train_loader), affordable))
        t.config.max_steps = t.steps + steps
        dev.reset_peak_memory(ctx.device)
        stats = train_one_epoch(t, stage, stage.start_epoch, folder, progress=False)
        rate = stats["train_images_per_second"]
        row.update(
            train_steps=steps,
            whole_epoch=steps == len(t.train_loader),
            train_images=stats["images"],
            train_images_per_second=rate,
            train_loss=stats["train_loss"],
            train_accuracy=stats["train_accuracy"],
            train_peak_memory_bytes=dev.peak_memory_bytes(ctx.device),
            projected_epoch_seconds_training=images_per_epoch / rate,
            projected_run_seconds_training=images_per_epoch / rate * stage.epochs,
            compilations_so_far=t.compiler.compilations,
        )
        if stage.index == 0 and len(data.val):
            row["val_loss"], row["val_accuracy"] = evaluate(
                t.eval_model, t.val_loader, t.augmenter.eval_transform, autocast=t.precision.autocast
            )
        result["stages"].append(row)
        print(
            f"training: stage {stage.index} at {stage.image_size:3d} px: first step {row['first_step_seconds']:.1f} s, "
            f"{row['step_images_per_second']:,.0f} img/s per step, {rate:,.0f} img/s training ({steps} steps"
            f"{', one epoch' if row['whole_epoch'] else ''}), peak {row['train_peak_memory_bytes'] / 2**30:.2f} GiB"
            + (f", validation accuracy {row['val_accuracy']:.2%}" if "val_accuracy" in row else ""),
            flush=True,
        )
        save()
    done = [r for r in result["stages"] if r["status"] == "done"]
    result.update(
        compilations=t.compiler.compilations,
        graph_breaks=t.compiler.graph_breaks,
        peak_memory_bytes=max(
            (max(r["step_peak_memory_bytes"], r["train_peak_memory_bytes"]) for r in done), default=None
        ),
    )
    flops = training_flops(
        config, known_train_images(data.name, config.val_fraction), data.in_channels, data.num_classes
    )
    total_flops = sum(r["train_flops"] for r in flops)
    result["train_flops"] = total_flops
    result["estimate_hours_at_10_percent"] = {
        name: gpu_hours(total_flops, peak, 0.10) for name, peak in GPU_PEAKS.items()
    }
    if len(done) == len(schedule):
        seconds = sum(r["projected_run_seconds_training"] for r in done)
        result.update(
            projected_run_hours=seconds / 3600,
            projected_run_hours_step_only=sum(r["projected_run_seconds"] for r in done) / 3600,
            achieved_flops_per_second=total_flops / seconds,
        )
        peak_name = matching_peak(dev.device_name(ctx.device))
        if peak_name:
            result.update(peak_used=peak_name, share_of_peak=total_flops / seconds / GPU_PEAKS[peak_name])
    result["status"] = (
        "passed"
        if len(done) == len(schedule) and result["graph_breaks"] == 0 and result["compilations"] in (0, len(schedule))
        else ("partial" if len(done) < len(schedule) else "failed")
    )
    save()


def matching_peak(name: str) -> str | None:
    """The GPU_PEAKS entry for this GPU: the H200 has the H100 SXM's tensor cores (more memory)."""
    from lib.preflight import GPU_PEAKS

    for key in GPU_PEAKS:
        model = key.split()[0]
        if model in name or (model == "H100" and "H200" in name):
            return key
    return None


def run_training(record, args, sizes, scratch, budget_left) -> dict:
    if args.data_root is None:
        return {
            "status": "skipped",
            "reason": "Fashion-MNIST not found: run `make gpu-data` here and carry build/gpu-data",
        }
    path = scratch / "training.json"
    argv = [
        sys.executable,
        __file__,
        "--part",
        "training",
        "--scratch",
        str(scratch),
        "--data-root",
        args.data_root,
        "--deadline",
        str(time.time() + budget_left),
        *(["--smoke"] if args.smoke else []),
    ]
    tail = []
    code, seconds = run_child(record, argv, budget_left, child_env(), tail)
    result = json.loads(path.read_text()) if path.exists() else {"status": "failed"}
    if code is None:
        result["status"] = "timed out"
    elif code != 0 and result.get("status") in ("running", "passed"):
        result["status"] = "failed"
    result.update(seconds=seconds, exit_code=code)
    if code != 0:
        result["output_tail"] = tail
    return result


def run_preflight(record, dataset: str, args, sizes, scratch, budget_left, cuda) -> dict:
    """``python -m lib.preflight ...`` as a student runs it, with the dry run's tiny settings."""
    out = scratch / f"preflight_{dataset}"
    extra, note = [], ""
    if dataset == "cifar10":
        sys.path.insert(0, str(REPO / "tests"))
        from formats import make_cifar10

        root = scratch / "cifar-stand-in"
        if not (root / "cifar-10-batches-py").exists():
            make_cifar10(root, per_batch=20)
        note = "on CIFAR-10 files in the real format (random pixels) from tests/formats.py"
        if cuda and budget_left < CIFAR_COMPILE_SECONDS:
            extra += ["--compile", "off"]
            note += f"; compile off: {budget_left:.0f} s of the budget left, too few for V2-M's three inductor compiles"
    else:
        root = Path(args.data_root) if args.data_root else None
        if root is None:
            sys.path.insert(0, str(REPO / "tests"))
            from formats import make_fashion_mnist

            root = scratch / "fashion-mnist-stand-in"
            make_fashion_mnist(root, n_train=600, n_test=100)
            note = "on stand-in files (random pixels): the real files were not found"
    if sizes.model_overrides is not None:
        overrides = dict(sizes.model_overrides, small_input=dataset == "fashion_mnist")  # as the profile has it
        extra += ["--set", "model_overrides=" + json.dumps(overrides)]
    if sizes.preflight_batch is not None:
        extra += ["--batch-size", str(sizes.preflight_batch)]
    if sizes.preflight_compile is not None and "--compile" not in extra:
        extra += ["--compile", sizes.preflight_compile]
    argv = [
        sys.executable,
        "-m",
        "lib.preflight",
        "--dataset",
        dataset,
        "--profile",
        "paper",
        "--out",
        str(out),
        "--set",
        f"data_root={root}",
        "--set",
        "download=false",
        *extra,
    ]
    command = " ".join(a if " " not in a else repr(a) for a in argv[1:])
    tail = []
    code, seconds = run_child(record, argv, budget_left, child_env(), tail)
    result = {"command": "python " + command, "note": note, "seconds": seconds, "exit_code": code}
    rows_path = out / "preflight.json"
    if code == 0 and rows_path.exists():
        rows = json.loads(rows_path.read_text())
        result.update(
            status="passed", rows=rows, projected_run_hours=sum(r["projected_run_seconds"] for r in rows) / 3600
        )
    else:
        result.update(status="timed out" if code is None else "failed", output_tail=tail)
    return result


def run_tests(record, args, sizes, scratch, budget_left) -> dict:
    """The tests that take ``device``, on CUDA where torch sees it. --confcutdir keeps the root
    conftest.py (notebooks: nbformat, which the device lacks) out."""
    junit = scratch / "junit.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--confcutdir",
        "tests",
        "-m",
        "on_device",
        "--junitxml",
        str(junit),
        *sizes.test_files,
    ]
    if sizes.test_filter:
        argv += ["-k", sizes.test_filter]
    # cuBLAS reads this before its first call: the deterministic-resume test needs it from the start
    tail = []
    code, seconds = run_child(record, argv, budget_left, {**child_env(), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}, tail)
    result = {"command": " ".join(["python", *argv[1:]]), "seconds": seconds, "exit_code": code, "cases": []}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome, message = (
                        {"failure": "failed"}.get(child.tag, child.tag),
                        (child.get("message") or "")[:500],
                    )
            result["cases"].append(
                {
                    "test": f"{case.get('classname')}::{case.get('name')}",
                    "outcome": outcome,
                    "seconds": float(case.get("time") or 0),
                    "message": message,
                }
            )
    counts = {k: sum(c["outcome"] == k for c in result["cases"]) for k in ("passed", "failed", "error", "skipped")}
    result.update(counts)
    result["status"] = (
        "timed out"
        if code is None
        else ("passed" if code == 0 and counts["passed"] and not counts["failed"] + counts["error"] else "failed")
    )
    if result["status"] != "passed":
        result["output_tail"] = tail
    return result


# ---------------------------------------------------------------- data for the device


def prepare_data(target: Path) -> None:
    """The four Fashion-MNIST files, gzipped (what lib.data reads; ~30 MB to carry), in TARGET/FashionMNIST/raw."""
    from lib.data import FASHION_MNIST_FILES, SYSTEM_FASHION_MNIST, _find_idx_files, read_idx

    found = _find_idx_files(REPO / "data" / "FashionMNIST" / "raw") or _find_idx_files(SYSTEM_FASHION_MNIST)
    if found is None:
        raise SystemExit("error: Fashion-MNIST is not on this machine: apt-get install dataset-fashion-mnist")
    raw = target / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for names in FASHION_MNIST_FILES.values():
        for name in names:
            source, dest = found[name], raw / f"{name}.gz"
            if source.suffix == ".gz":
                shutil.copyfile(source, dest)
            else:
                with open(source, "rb") as src, gzip.open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            read_idx(dest)  # fails here, with the file's name, if it is bad
    size = sum(p.stat().st_size for p in raw.iterdir())
    print(
        f"{raw}: the four files, {size / 2**20:.1f} MiB; carry {target.relative_to(REPO) if target.is_relative_to(REPO) else target}"
    )


# ---------------------------------------------------------------- the check


def summary_lines(data: dict) -> list[str]:
    lines = []
    env = data["environment"]
    lines.append(
        f"{'DRY RUN on the CPU (no CUDA device): not GPU figures' if data['dry_run'] else env.get('gpu')}, "
        f"torch {env['torch']}, commit {data['commit']}, {data['wall_seconds']:.0f} s of {data['budget_seconds']} s"
    )
    for name, part in data["parts"].items():
        line = f"{name}: {part.get('status')}"
        if part.get("seconds") is not None:
            line += f" in {part['seconds']:.0f} s"
        if part.get("reason"):
            line += f" ({part['reason']})"
        if name == "tests" and "passed" in part:
            line += (
                f": {part['passed']} passed, {part['failed']} failed, {part['error']} errors, {part['skipped']} skipped"
            )
        if name == "training" and part.get("stages"):
            rates = ", ".join(
                f"{r['image_size']} px {r['train_images_per_second']:,.0f} img/s"
                for r in part["stages"]
                if r.get("status") == "done"
            )
            line += f": {rates}; compilations {part.get('compilations')}, graph breaks {part.get('graph_breaks')}"
            if part.get("peak_memory_bytes"):
                line += f", peak memory {part['peak_memory_bytes'] / 2**30:.2f} GiB"
            if "projected_run_hours" in part:
                est = part["estimate_hours_at_10_percent"].get(part.get("peak_used") or "H100 SXM (bf16)")
                line += f"; projected full run {part['projected_run_hours']:.3g} h"
                if est is not None:
                    line += f" (estimate at 10% of {part.get('peak_used') or 'H100 SXM (bf16)'}'s peak: {est:.3g} h)"
                if "share_of_peak" in part:
                    line += f", {part['share_of_peak']:.1%} of the peak measured"
        if name.startswith("preflight") and "projected_run_hours" in part:
            line += f": projected {part['projected_run_hours']:.3g} h" + (
                f" ({part['note']})" if part.get("note") else ""
            )
        lines.append(line)
    lines += data["compatibility"]
    return lines


def check(args) -> int:
    out = Path(args.out)
    record = Record(out)
    cuda = torch.cuda.is_available()
    sizes = REAL if cuda else (SMOKE if args.smoke else DRY)
    budget = args.budget or (BUDGET if cuda else DRY_BUDGET)
    started = time.perf_counter()
    sha, source = commit(args.commit or os.environ.get("GPU_CHECK_COMMIT"))
    args.data_root = str(find_fashion_mnist(args.data_root) or "") or None
    data = record.data
    data.update(
        check="benchmarks/gpu_check.py",
        dry_run=not cuda,
        smoke=bool(args.smoke and not cuda),
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=sha,
        commit_source=source,
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        budget_seconds=budget,
        sizes=dataclasses.asdict(sizes),
        data_root=args.data_root,
        environment=environment(cuda),
        compatibility=compatibility(),
        parts={},
    )
    if cuda:
        record.say(
            f"gpu-check on {data['environment']['gpu']} (torch {torch.__version__}, CUDA {torch.version.cuda}), "
            f"commit {sha}, budget {budget} s"
        )
    else:
        record.say(
            f"gpu-check DRY RUN: torch {torch.__version__} sees no CUDA device, so every part runs on the CPU "
            f"with a tiny network{' (smoke sizes)' if data['smoke'] else ''}; it proves the script, not a GPU "
            f"figure (commit {sha}, budget {budget} s)"
        )
    for line in data["compatibility"]:
        record.say(line)
    record.write()
    scratch = record.scratch = Path(tempfile.mkdtemp(prefix="gpu_check."))
    try:
        for name in PARTS:
            cap, least = PARTS[name] if cuda else (budget, 1)
            left = budget - (time.perf_counter() - started) - RESERVE
            if left < least:
                data["parts"][name] = {"status": "skipped", "reason": f"{max(left, 0):.0f} s of the budget left"}
                record.say(f"== {name}: skipped ({max(left, 0):.0f} s of the budget left)")
                continue
            limit = min(cap, left)
            record.say(f"== {name} (at most {limit:.0f} s)")
            try:
                if name == "training":
                    part = run_training(record, args, sizes, scratch, limit)
                elif name == "tests":
                    part = run_tests(record, args, sizes, scratch, limit)
                else:
                    part = run_preflight(record, name.split("_", 1)[1], args, sizes, scratch, limit, cuda)
            except Exception as e:  # one part's failure must not lose the others
                part = {
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-2000:],
                }
            data["parts"][name] = part
            data["wall_seconds"] = time.perf_counter() - started
            record.say(f"== {name}: {part['status']}" + (f" in {part['seconds']:.0f} s" if "seconds" in part else ""))
            record.write()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    data["wall_seconds"] = time.perf_counter() - started
    data["summary"] = summary_lines(data)
    data["passed"] = all(p.get("status") == "passed" for p in data["parts"].values())
    record.say("== summary")
    for line in data["summary"]:
        record.say(line)
    record.say(f"wrote {out / RESULT} and {out / LOG}")
    record.write()
    return 0 if data["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for gpu_check.json and gpu_check.log ($OUT on the device)")
    p.add_argument(
        "--budget", type=float, help=f"seconds for the whole check (default {BUDGET} on CUDA, {DRY_BUDGET} dry)"
    )
    p.add_argument("--data-root", help="a folder holding FashionMNIST/raw (default: build/gpu-data, else data/)")
    p.add_argument("--commit", help="the commit checked, where .git does not travel (default: git, else unknown)")
    p.add_argument("--smoke", action="store_true", help="without CUDA: the smallest dry run (make test runs it)")
    p.add_argument(
        "--prepare-data", metavar="DIR", help="write the four Fashion-MNIST .gz files to carry into DIR and stop"
    )
    p.add_argument("--part", choices=["training"], help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare_data:
        prepare_data(Path(args.prepare_data).resolve())
        return 0
    if args.part == "training":
        sizes = REAL if torch.cuda.is_available() else (SMOKE if args.smoke else DRY)
        part_training(args, sizes, Path(args.scratch) / "training.json", args.deadline)
        return 0
    if not args.out:
        p.error("--out DIR is required (make gpu-check OUT=DIR)")
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
