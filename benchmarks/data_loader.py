"""One epoch of Fashion-MNIST batches: our DeviceLoader against torchvision's DataLoader.

Both produce the same thing a training step needs (a shuffled batch of normalized float images and
labels on the device); the ratio is measured in one run, so machine load affects both sides.

    python benchmarks/data_loader.py [--device cuda] [--batch-size 256] [--repeats 3]
"""

import argparse
import os
import time

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from lib.data import DeviceLoader, load_dataset
from lib.runs import REPO_ROOT


def epoch_device_loader(ds, batch_size, device, mean, std):
    n = 0
    for images, labels in DeviceLoader(ds.train, batch_size, seed=0):
        _normalized = (images.float() / 255 - mean) / std  # the work a step does with them
        n += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def epoch_torch_dataloader(loader, device):
    n = 0
    for images, labels in loader:
        _x, y = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()
    device = torch.device(args.device)

    ds = load_dataset("fashion_mnist", REPO_ROOT / "data", val_fraction=0, device=device)
    mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)
    tv = torchvision.datasets.FashionMNIST(
        str(REPO_ROOT / "data"),
        train=True,
        download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(ds.mean, ds.std)]),
    )
    loader = DataLoader(
        tv,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    epoch_torch_dataloader(loader, device)  # warm up workers
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both sides
        t = time.perf_counter()
        n = epoch_device_loader(ds, args.batch_size, device, mean, std)
        ours.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = epoch_torch_dataloader(loader, device)
        theirs.append(n / (time.perf_counter() - t))
    best_ours, best_theirs = max(ours), max(theirs)
    print(f"device={device} batch={args.batch_size} workers={args.workers} images/epoch={n}")
    print(f"DeviceLoader (uint8 on {device}, normalize per batch): {best_ours:12,.0f} images/s")
    print(f"torchvision DataLoader ({args.workers} workers, ToTensor+Normalize): {best_theirs:12,.0f} images/s")
    print(f"ratio DeviceLoader / DataLoader: {best_ours / best_theirs:.1f}x")


if __name__ == "__main__":
    main()
