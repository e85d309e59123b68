"""Augmented images per second: our batched per-sample RandAugment (+ crop/flip + resize) against
torchvision's per-image PIL pipeline in a DataLoader on all CPU cores, on real Fashion-MNIST.

    python benchmarks/augment_throughput.py --device cpu --images 20000 --magnitude 9 --image-size 50

Both sides do the same work per image: random crop (padding 2) + horizontal flip, RandAugment
(2 ops, same magnitude), resize to --image-size, and a float tensor out. Ours keeps the uint8
dataset on --device and augments whole batches there; the DataLoader time includes starting its
workers, as it would at every epoch.
CPU note: on a machine shared with other processes, torch's intra-op threads can lose ~10x to
contention (seen here on 2 busy cores); compare with --threads 1.
"""

import argparse
import os
import time

import torch
import torchvision
from torchvision import transforms

from lib.augment import RandAugment, random_crop_flip, resize
from lib.runs import REPO_ROOT

DATA_ROOT = REPO_ROOT / "data"
PADDING = 2
NUM_OPS = 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours_images_per_second(images: torch.Tensor, args, device: torch.device) -> float:
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    randaugment = RandAugment(num_ops=NUM_OPS, magnitude=args.magnitude)

    def augment(batch):
        batch = random_crop_flip(batch, PADDING, generator)
        return resize(randaugment(batch, generator).float(), args.image_size)

    augment(images[: args.batch_size])  # warm-up (allocator, kernels)
    synchronize(device)
    start = time.perf_counter()
    done = 0
    while done < args.images:
        start_index = done % (len(images) - args.batch_size)
        augment(images[start_index : start_index + args.batch_size])
        done += args.batch_size
    synchronize(device)
    return done / (time.perf_counter() - start)


def torchvision_images_per_second(args) -> float:
    pipeline = transforms.Compose(
        [
            transforms.RandomCrop(28, padding=PADDING),
            transforms.RandomHorizontalFlip(),
            transforms.RandAugment(num_ops=NUM_OPS, magnitude=args.magnitude),
            transforms.Resize(args.image_size),
            transforms.ToTensor(),
        ]
    )
    dataset = torchvision.datasets.FashionMNIST(root=DATA_ROOT, train=True, download=False, transform=pipeline)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=os.cpu_count(), drop_last=True
    )
    start = time.perf_counter()
    done = 0
    while done < args.images:
        for batch, _ in loader:
            done += len(batch)
            if done >= args.images:
                break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--magnitude", type=int, default=9)
    parser.add_argument("--image-size", type=int, default=50)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for ours (default: torch's choice); on a "
        "busy shared CPU, 1 avoids threads spinning against other processes",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    train = torchvision.datasets.FashionMNIST(root=DATA_ROOT, train=True, download=False)
    images = train.data.unsqueeze(1)  # 60000 x 1 x 28 x 28 uint8

    ours = ours_images_per_second(images, args, device)
    reference = torchvision_images_per_second(args)
    print(
        f"device={device} images={args.images} batch={args.batch_size} "
        f"magnitude={args.magnitude} image_size={args.image_size} cpu_cores={os.cpu_count()} "
        f"torch_threads={torch.get_num_threads()}"
    )
    print(f"ours (batched per-sample RandAugment on {device}): {ours:10.0f} images/s")
    print(f"torchvision PIL RandAugment, DataLoader x{os.cpu_count()} workers: {reference:10.0f} images/s")
    print(f"speed-up: {ours / reference:.2f}x")


if __name__ == "__main__":
    main()
