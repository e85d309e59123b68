"""What makes a training step fast on a CPU: each choice measured as a ratio in one run.

    python benchmarks/cpu_training.py                    # every measurement below, ~5 min on 2 cores
    python benchmarks/cpu_training.py --only threads batch
    python benchmarks/cpu_training.py --only compile     # inductor: minutes of compiling first
    python benchmarks/cpu_training.py --only mfu --run runs/fashion_mnist/quick/terminal/seed0   # + a real run's MFU

Every comparison alternates its two (or more) settings, A B A B ..., and reports the median
images/s of each and their ratio, so machine noise hits all alike. The model is a profile's
(``--profile quick``: V2-S width 0.35 / depth 0.2, small-image stem) on random pixels: speed does
not depend on what the pixels show, and no accuracy is claimed here. ``mfu`` compares the
trainer's achieved training FLOP/s with this machine's dense fp32 matmul FLOP/s, the practical
peak. Record the machine with the numbers (``lscpu``: AVX2 and AVX-512 machines differ 2x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.models import build_model, count_flops
from lib.models.blocks import DepthwiseConv2d
from lib.optim import ema_of
from lib.profiles import config_for
from lib.runs import cpu_flags, cpu_name


def model_for(profile: str, channels_last: bool = True):
    c = config_for(profile, "fashion_mnist")
    model = build_model(c.model, 10, 1, **c.model_overrides)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_rate(model, batch: int, size: int, steps: int, channels_last: bool = True, ema=None) -> float:
    """Images per second of forward + loss + backward + Adam step (+ EMA update)."""
    opt = getattr(model, "_bench_opt", None) or torch.optim.Adam(model.parameters(), 1e-3)
    model._bench_opt = opt
    x = torch.randn(batch, 1, size, size)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, 10, (batch,))
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
    return steps * batch / (time.perf_counter() - started)


def interleaved(candidates: dict, reps: int) -> dict:
    """{name: median of reps} for {name: zero-argument function returning a rate}, run A B A B ..."""
    for fn in candidates.values():
        fn()  # warm-up: allocator, oneDNN primitives
    rates = {name: [] for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            rates[name].append(fn())
    return {name: statistics.median(values) for name, values in rates.items()}


def report(title: str, rates: dict, unit: str = "img/s", base: str | None = None) -> None:
    base = base or next(iter(rates))
    print(f"\n{title}")
    for name, rate in rates.items():
        print(f"  {name:34s} {rate:10.1f} {unit}   {rate / rates[base]:5.2f}x vs {base}")


def depthwise(args) -> None:
    """The quick model's last-stage depthwise conv at 28 px input: a 2x2 map, smaller than its kernel."""
    shape = (256, 528, 2, 2)
    ours = DepthwiseConv2d(528, 528, 3, 1, 1, groups=528, bias=False).to(memory_format=torch.channels_last)
    plain = torch.nn.Conv2d(528, 528, 3, 1, 1, groups=528, bias=False).to(memory_format=torch.channels_last)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)

    def rate(conv):
        def run():
            started = time.perf_counter()
            for _ in range(10):
                conv(x).backward(grad)
            return 10 / (time.perf_counter() - started)

        return run

    report(
        "depthwise 3x3 forward + backward on a 2x2 map, 256 x 528 channels, channels_last",
        interleaved(
            {"nn.Conv2d (oneDNN's weight gradient)": rate(plain), "DepthwiseConv2d (tap sums)": rate(ours)}, args.reps
        ),
        unit="calls/s",
    )


def memory_format(args) -> None:
    cl, nchw = model_for(args.profile, True), model_for(args.profile, False)
    report(
        f"memory format, batch {args.batch}, {args.size} px",
        interleaved(
            {
                "contiguous (NCHW)": lambda: step_rate(nchw, args.batch, args.size, args.steps, False),
                "channels_last": lambda: step_rate(cl, args.batch, args.size, args.steps, True),
            },
            args.reps,
        ),
    )


def threads(args) -> None:
    model, total = model_for(args.profile), torch.get_num_threads()

    def with_threads(n):
        def run():
            torch.set_num_threads(n)
            try:
                return step_rate(model, args.batch, args.size, args.steps)
            finally:
                torch.set_num_threads(total)

        return run

    report(
        f"intra-op threads ({total} is torch's default here), batch {args.batch}, {args.size} px",
        interleaved({f"{n} thread(s)": with_threads(n) for n in sorted({1, total})}, args.reps),
    )


def batch(args) -> None:
    model = model_for(args.profile)
    sizes = (64, 128, 256, 512)
    report(
        f"batch size, {args.size} px (images per second; fewer, larger steps per epoch as it grows)",
        interleaved(
            {
                f"batch {b}": (lambda b=b: step_rate(model, b, args.size, max(2, args.steps * 256 // b // 2)))
                for b in sizes
            },
            args.reps,
        ),
        base="batch 256",
    )


def image_size(args) -> None:
    model = model_for(args.profile)
    report(
        f"image size (progressive stages), batch {args.batch}",
        interleaved(
            {f"{s} px": (lambda s=s: step_rate(model, args.batch, s, args.steps)) for s in (20, 24, 28)}, args.reps
        ),
        base="28 px",
    )


def ema(args) -> None:
    model = model_for(args.profile)
    averaged = ema_of(model, 0.999)
    report(
        f"EMA of weights, batch {args.batch}, {args.size} px",
        interleaved(
            {
                "no EMA": lambda: step_rate(model, args.batch, args.size, args.steps),
                "EMA update every step": lambda: step_rate(model, args.batch, args.size, args.steps, ema=averaged),
            },
            args.reps,
        ),
    )


def evaluation(args) -> None:
    """Seconds to evaluate the validation split (6,000 images) against seconds to train an epoch."""
    model = model_for(args.profile)
    train_rate = statistics.median(step_rate(model, args.batch, args.size, args.steps) for _ in range(args.reps))
    x = torch.randn(500, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        model(x)
        started = time.perf_counter()
        for _ in range(4):
            model(x)
        eval_rate = 2000 / (time.perf_counter() - started)
    epoch, validation = 54000 / train_rate, 6000 / eval_rate
    print(
        f"\nevaluation cost per epoch, {args.size} px: training 54,000 images {epoch:.1f} s, validating "
        f"6,000 images {validation:.1f} s ({eval_rate:.0f} img/s): {validation / epoch:.1%} of an epoch"
    )


def compile_cost(args) -> None:
    eager, compiled = model_for(args.profile), model_for(args.profile)
    compiled.load_state_dict(eager.state_dict())
    fast = torch.compile(compiled, dynamic=False)
    started = time.perf_counter()
    step_rate(fast, args.batch, args.size, 1)
    print(f"\ntorch.compile (inductor, CPU): first step {time.perf_counter() - started:.0f} s including compilation")
    report(
        f"steady state after compiling, batch {args.batch}, {args.size} px",
        interleaved(
            {
                "eager": lambda: step_rate(eager, args.batch, args.size, args.steps),
                "compiled (inductor)": lambda: step_rate(fast, args.batch, args.size, args.steps),
            },
            args.reps,
        ),
    )


def matmul_peak(reps: int) -> float:
    """This machine's dense fp32 matmul FLOP/s (2048^2, median of ``reps``): the practical peak."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    rates = []
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        rates.append(5 * 2 * 2048**3 / (time.perf_counter() - started))
    return statistics.median(rates)


def mfu(args) -> None:
    """Achieved training FLOP/s (3 x forward FLOPs per image) against dense fp32 matmul FLOP/s.

    With ``--run DIR`` (a finished run of this machine) the trainer's own figure comes first: its
    ``train_flops`` over its training seconds (validation included), the whole loop as it ran."""
    peak = matmul_peak(args.reps)
    print(f"\ndense fp32 matmul 2048^2: {peak / 1e9:.1f} GFLOP/s (the practical peak)")
    if args.run:
        metrics = json.loads((Path(args.run) / "metrics.json").read_text())
        achieved = metrics["train_flops"] / metrics["train_seconds"]
        print(
            f"MFU of the run in {args.run} ({metrics['profile']} profile, {metrics['epochs']} epochs): "
            f"{metrics['train_flops'] / 1e12:.2f} TFLOP in {metrics['train_seconds']:.0f} s = {achieved / 1e9:.1f} GFLOP/s, "
            f"{achieved / peak:.1%} of the peak (measured now: run it on the machine that trained)"
        )
    model = model_for(args.profile)
    per_image = 3 * count_flops(model, args.size, 1)
    images = statistics.median(step_rate(model, args.batch, args.size, args.steps) for _ in range(args.reps))
    print(
        f"MFU of a bare training step, batch {args.batch}: {images:.0f} img/s x {per_image / 1e6:.1f} MFLOP = "
        f"{images * per_image / 1e9:.1f} GFLOP/s, {images * per_image / peak:.1%} of the peak"
    )


MEASUREMENTS = {
    "depthwise": depthwise,
    "format": memory_format,
    "threads": threads,
    "batch": batch,
    "size": image_size,
    "ema": ema,
    "evaluation": evaluation,
    "mfu": mfu,
    "compile": compile_cost,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), help="run only these (default: all but compile)")
    p.add_argument("--profile", default="quick", help="whose model to time (default quick)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--steps", type=int, default=6, help="training steps per timed repetition")
    p.add_argument("--reps", type=int, default=5, help="repetitions per setting, interleaved")
    p.add_argument("--run", help="mfu: also the achieved FLOP/s of this finished run folder (its metrics.json)")
    args = p.parse_args()
    torch.manual_seed(0)
    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, flags: {cpu_flags() or '?'}; torch {torch.__version__}; "
        f"{args.profile} profile's model"
    )
    for name in args.only or [m for m in MEASUREMENTS if m != "compile"]:
        MEASUREMENTS[name](args)


if __name__ == "__main__":
    main()
