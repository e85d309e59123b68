"""What depends on the device: mixed precision, torch.compile, clocks and memory.

Everything here runs on a CPU as well (CPU autocast in bf16 or fp16, a CPU GradScaler, compile
with a tracing backend), so the tests exercise the GPU recipe's code paths; what only CUDA can
do is the few ``device.type == "cuda"`` lines below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("off", "auto", "inductor", "aot_eager", "eager")


def resolve(spec: str, local_rank: int | None = None) -> torch.device:
    """The device ``--device`` names: ``auto`` is CUDA when torch sees it, else the CPU. ``cuda`` or
    ``cuda:N`` that torch does not see is a one-line error saying what it sees, not a CPU run that
    looks like a GPU run. Under torchrun (``local_rank``) each process takes the GPU of its local rank."""
    if spec not in ("auto", "cpu", "cuda") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise ValueError(f"unknown device {spec!r}: choose auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "cpu" or (spec == "auto" and count == 0):
        return torch.device("cpu")
    index = int(spec[5:]) if spec.startswith("cuda:") else None
    if local_rank is not None:
        if index is not None:
            raise ValueError(
                f"--device {spec} under torchrun: each process takes the GPU of its local rank; "
                f"use --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
            )
        index = local_rank
    if count == 0:
        fix = (
            "switch on the GPU runtime (Colab: Runtime > Change runtime type; Kaggle: Accelerator)"
            if torch.version.cuda
            else "install a CUDA build of torch on a machine with a GPU"
        )
        raise ValueError(f"--device {spec}: {cuda_seen(count)}; {fix}, or run with --device cpu")
    if index is not None and index >= count and local_rank is not None:
        raise ValueError(
            f"torchrun process {local_rank} needs cuda:{index}: {cuda_seen(count)}; start at most "
            f"{count} process(es) per machine (--nproc_per_node {count})"
        )
    if index is not None and index >= count:
        raise ValueError(
            f"--device {spec}: {cuda_seen(count)}; choose "
            f"{'cuda:0' if count == 1 else f'cuda:0 to cuda:{count - 1}'} or run with --device cpu"
        )
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def cuda_seen(count: int) -> str:
    """What torch sees of CUDA, in words: its build and the device count."""
    build = (
        f"torch {torch.__version__} (built with CUDA {torch.version.cuda})"
        if torch.version.cuda
        else f"torch {torch.__version__} (a CPU-only build)"
    )
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = f" ({', '.join(f'cuda:{i}' for i in range(count))})" if count else ""
    return f"{build} sees {count} CUDA device{'s' if count != 1 else ''}{listed}" + (
        f" with CUDA_VISIBLE_DEVICES={hidden!r}" if hidden is not None else ""
    )


def describe(spec: str, device: torch.device) -> str:
    """The device for the start line; ``auto`` that fell back to the CPU says so."""
    return (
        f"{device} (--device auto: torch sees no CUDA device)"
        if spec == "auto" and device.type == "cpu"
        else str(device)
    )


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"


def bf16_supported(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else True


@dataclass
class Precision:
    """The autocast dtype (None: fp32) and the gradient scaler fp16 needs (disabled otherwise)."""

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        if self.dtype is None:
            return "fp32"
        return "bf16 autocast" if self.dtype is torch.bfloat16 else "fp16 autocast with gradient scaling"


def precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on a GPU that has it, fp16 + GradScaler on one that does not (T4, V100),
    fp32 on a CPU; ``bf16``/``fp16`` ask for one (a device that cannot is a one-line error); ``off``."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp {amp!r}: choose one of {', '.join(AMP_MODES)}")
    if amp == "auto":
        dtype = (torch.bfloat16 if bf16_supported(device) else torch.float16) if device.type == "cuda" else None
    elif amp == "bf16":
        if not bf16_supported(device):
            raise ValueError(
                f"amp bf16: {device_name(device)} cannot compute in bf16; it supports fp16 "
                f"(--set amp=fp16) or fp32 (--set amp=off)"
            )
        dtype = torch.bfloat16
    else:
        dtype = {"fp16": torch.float16, "off": None}[amp]
    return Precision(device, dtype, torch.amp.GradScaler(device.type, enabled=dtype is torch.float16))


class Compiler:
    """torch.compile with static shapes, counting what it does.

    ``dynamic=False``: every new image size (one per progressive stage) compiles its own static
    graph, instead of the dynamic-shape kernels PyTorch switches to after the second size, which
    run slower for the rest of training. ``auto`` compiles with inductor on CUDA and not at all on
    a CPU, where compiling every image size costs more than the faster steps win back in the CPU
    profiles' short runs (``benchmarks/cpu_training.py --only compile`` times both): ``inductor``
    opts in; ``aot_eager`` and ``eager`` trace the graph without generating code (the tests' way
    to check graph capture, graph breaks and recompilation quickly).
    """

    def __init__(self, mode: str, device: torch.device):
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
        self.mode = mode
        self.backend = (
            ("inductor" if device.type == "cuda" else None) if mode == "auto" else (None if mode == "off" else mode)
        )
        if self.backend == "inductor" and device.type == "cpu":
            require_cpp_compiler()
            logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_note)
        self.compilations = 0
        self._breaks_before = self._graph_breaks_so_far()

    def describe(self) -> str:
        if self.backend is None:
            return "compile off" + (" (auto: inductor only on CUDA, where it pays)" if self.mode == "auto" else "")
        return f"compile {self.backend}, static shapes"

    def __call__(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.backend is None:
            return model
        inner = torch._dynamo.lookup_backend(self.backend)

        def counting_backend(graph, example_inputs):
            self.compilations += 1
            return inner(graph, example_inputs)

        return torch.compile(model, backend=counting_backend, dynamic=False)

    @property
    def graph_breaks(self) -> int:
        return self._graph_breaks_so_far() - self._breaks_before

    @staticmethod
    def _graph_breaks_so_far() -> int:
        from torch._dynamo.utils import counters

        return sum(counters["graph_break"].values())


def _no_cuda_note(record: logging.LogRecord) -> bool:
    """Drops torch's 'No CUDA runtime is found' warning, which a CPU compile cannot act on."""
    return "No CUDA runtime is found" not in record.getMessage()


def require_cpp_compiler() -> None:
    """Inductor's CPU backend builds C++ kernels: ask its own compiler search ($CXX, else g++) now,
    so a machine without one gets a line before any work instead of a traceback at the first step."""
    from torch._inductor import config, cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise ValueError(
            f"compile inductor on a CPU builds C++ kernels, and the C++ compiler {config.cpp.cxx[-1]!r} "
            f"was not found: install one (Debian: apt-get install g++), name it in CXX, or run "
            f"without --compile"
        ) from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak since the last reset. CPU: the process's peak resident memory
    (all it can measure; it never goes down, so a later stage reports at least an earlier one's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
