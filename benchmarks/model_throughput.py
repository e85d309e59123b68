"""Training-step throughput of our EfficientNetV2 vs torchvision's, same weights, same settings.

One step = forward + cross-entropy + backward + SGD step. Repetitions alternate between the two
models (ours, torchvision, ours, ...) so that machine noise hits both alike; we report the
median images/s of each and the ratio ours / torchvision from the same run.

    python benchmarks/model_throughput.py                      # CPU, batch 8, 64 px
    python benchmarks/model_throughput.py --device cuda --batch 128 --size 224 --compile

On CUDA the step runs under bf16 autocast with channels_last memory format.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from lib.models import build_model, load_torchvision_weights

TORCHVISION = {
    "efficientnetv2_s": "efficientnet_v2_s",
    "efficientnetv2_m": "efficientnet_v2_m",
    "efficientnetv2_l": "efficientnet_v2_l",
    "efficientnet_b0": "efficientnet_b0",
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnetv2_s", choices=sorted(TORCHVISION))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
    p.add_argument("--reps", type=int, default=6, help="repetitions per model (interleaved)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    return p.parse_args()


def make_step(model, device, use_amp):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, x, y, n, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * x.shape[0] / (time.perf_counter() - start)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    reference = getattr(torchvision.models, TORCHVISION[args.model])(num_classes=args.classes)
    ours = build_model(args.model, args.classes)
    load_torchvision_weights(ours, reference.state_dict())
    models = {"ours": ours, "torchvision": reference}
    fmt = torch.channels_last if cuda else torch.contiguous_format
    steps = {}
    for name, model in models.items():
        model.to(device, memory_format=fmt).train()
        if args.compile:
            model = torch.compile(model)
        steps[name] = make_step(model, device, use_amp=cuda)

    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    for name, step in steps.items():
        timed(step, x, y, args.warmup, device)

    rates = {name: [] for name in steps}
    for rep in range(args.reps):
        order = list(steps) if rep % 2 == 0 else list(steps)[::-1]
        for name in order:
            rates[name].append(timed(steps[name], x, y, args.steps, device))

    med = {name: statistics.median(r) for name, r in rates.items()}
    print(
        f"{args.model} train step on {device} ({torch.get_num_threads()} threads), "
        f"batch {args.batch}, {args.size} px, amp={'bf16' if cuda else 'off'}, "
        f"channels_last={cuda}, compile={args.compile}, {args.reps}x{args.steps} steps"
    )
    for name, value in med.items():
        spread = f"{min(rates[name]):.1f}-{max(rates[name]):.1f}"
        print(f"  {name:12s} {value:9.1f} img/s (median; range {spread})")
    print(f"  ratio ours/torchvision: {med['ours'] / med['torchvision']:.3f}")


if __name__ == "__main__":
    main()
