"""lib.data on small files in the real on-disk formats, written here, plus the real Fashion-MNIST."""

import gzip
import pickle
import struct
import urllib.error

import numpy as np

import pytest
import torch
import torchvision

import lib.data as data
from formats import make_cifar10, make_cifar100, make_fashion_mnist, write_png
from lib.data import (
    CorruptDataError,
    DataNotFoundError,
    DatasetError,
    DeviceLoader,
    Split,
    UnknownDatasetError,
    load_dataset,
    stratified_split,
)


@pytest.fixture(autouse=True)
def no_system_copy(tmp_path, monkeypatch):
    """Keep this machine's Debian copy out of the tests that build their own files."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")


def test_fashion_mnist_idx_gz(tmp_path, device):
    make_fashion_mnist(tmp_path)
    ds = load_dataset("fashion_mnist", tmp_path, download=False, val_fraction=0.2, device=device)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 20)
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.train.images.dtype == torch.uint8
    for split in (ds.train, ds.val, ds.test):  # every split lives on the training device
        assert split.images.device.type == split.labels.device.type == device.type
    assert torch.bincount(ds.val.labels).tolist() == [2] * 10
    assert ds.classes[6] == "Shirt" and ds.num_classes == 10
    x = ds.train.images.double() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item()) and ds.std[0] == pytest.approx(x.std(unbiased=False).item())


def test_system_copy_is_decompressed_into_data(tmp_path, monkeypatch):
    system = make_fashion_mnist(tmp_path / "usr")
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", system)
    ds = load_dataset("fashion_mnist", tmp_path / "data", download=False)
    assert ds.source == str(system) and len(ds.test) == 20
    assert (tmp_path / "data/FashionMNIST/raw/train-images-idx3-ubyte").stat().st_size == 16 + 100 * 784


def test_truncated_file_is_named_and_kept(tmp_path):
    raw = make_fashion_mnist(tmp_path)
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert bad.exists()


@pytest.mark.parametrize(
    "name, damage",
    [
        ("t10k-images-idx3-ubyte", lambda b: b[:-1]),
        ("train-labels-idx1-ubyte", lambda b: b + b"\x00"),
        ("train-images-idx3-ubyte", lambda b: b"\x01\x02" + b[2:]),
    ],
    ids=["truncated", "padded", "bad magic"],
)
def test_a_damaged_idx_file_is_named_in_one_line(tmp_path, name, damage):
    raw = make_fashion_mnist(tmp_path, gz=False)
    (raw / name).write_bytes(damage((raw / name).read_bytes()))
    with pytest.raises(CorruptDataError, match="truncated or padded") as err:
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert str(err.value).startswith(f"{raw / name}: ") and "\n" not in str(err.value)


def idx_array(path) -> np.ndarray:
    """The test's own reading of an idx file (uint8 only): 4 + 4 x ndim header bytes, then the values."""
    payload = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    shape = struct.unpack(f">{payload[3]}I", payload[4 : 4 + 4 * payload[3]])
    return np.frombuffer(payload, np.uint8, offset=4 + 4 * payload[3]).reshape(shape)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_files_load_bit_for_bit(tmp_path, gz):
    raw = make_fashion_mnist(tmp_path, gz=gz)
    ds = load_dataset("fashion_mnist", tmp_path, download=False, val_fraction=0)
    suffix = ".gz" if gz else ""
    for split, prefix in ((ds.train, "train"), (ds.test, "t10k")):
        assert torch.equal(
            split.images[:, 0], torch.from_numpy(idx_array(raw / f"{prefix}-images-idx3-ubyte{suffix}").copy())
        )
        assert split.labels.tolist() == idx_array(raw / f"{prefix}-labels-idx1-ubyte{suffix}").tolist()
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64


@pytest.mark.parametrize(
    "key, make, batches",
    [
        (
            "cifar10",
            make_cifar10,
            ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"],
        ),
        ("cifar100", make_cifar100, ["train", "test"]),
    ],
)
def test_cifar_pickles_load_bit_for_bit(tmp_path, key, make, batches):
    folder = make(tmp_path)
    ds = load_dataset(key, tmp_path, download=False, val_fraction=0)
    written = [pickle.loads((folder / name).read_bytes(), encoding="bytes") for name in batches]
    label = b"labels" if key == "cifar10" else b"fine_labels"
    expected = {"train": written[:-1], "test": written[-1:]}
    for split, files in ((ds.train, expected["train"]), (ds.test, expected["test"])):
        assert torch.equal(
            split.images, torch.from_numpy(np.concatenate([b[b"data"] for b in files]).reshape(-1, 3, 32, 32))
        )
        assert split.labels.tolist() == [y for b in files for y in b[label]]
    assert ds.train.images.dtype == torch.uint8 and ds.classes[3] == ("cat" if key == "cifar10" else "class_03")


def test_missing_data_names_every_place_and_the_fix(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "no-system-copy" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "URLError" in msg
    with pytest.raises(DataNotFoundError, match="Download is disabled"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_cifar10_pickles(tmp_path):
    make_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path, download=False, val_fraction=0.1)
    assert len(ds.train) + len(ds.val) == 100 and len(ds.test) == 20
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.classes[3] == "cat"
    assert len(ds.mean) == 3


def test_cifar_downloads_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:  # stands in for the network: writes what torchvision's download writes
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (tmp_path / "cifar-10-batches-py").exists():
                make_cifar10(tmp_path)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", tmp_path)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert "downloaded" in ds.source and len(ds.test) == 20


def test_corrupt_cifar_pickle_is_named(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, download=False)
    assert (folder / "data_batch_3").exists()


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(UnknownDatasetError, match="fashion_mnist, cifar10, cifar100"):
        load_dataset("imagenet", tmp_path)


def test_image_folder(tmp_path):
    for c, v in (("crow", 10), ("parrot", 200)):
        for i in range(10):
            write_png(tmp_path / "birds" / c / f"{i}.png", v)
    ds = load_dataset(str(tmp_path / "birds"), image_size=16, val_fraction=0.25)
    assert ds.classes == ("crow", "parrot") and ds.train.images.shape[1:] == (3, 16, 16)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20
    assert int(ds.test.images[ds.test.labels == 1].min()) == 200


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        load_dataset(str(tmp_path / "empty"))
    write_png(tmp_path / "one" / "only" / "0.png", 1)
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset(str(tmp_path / "one"))
    write_png(tmp_path / "bad" / "a" / "0.png", 1)
    (tmp_path / "bad" / "b").mkdir()
    (tmp_path / "bad" / "b" / "0.png").write_bytes(b"garbage")
    with pytest.raises(CorruptDataError, match="0.png"):
        load_dataset(str(tmp_path / "bad"))


def test_stratified_split_is_deterministic_and_balanced():
    split = Split(torch.arange(1000).view(-1, 1, 1, 1).to(torch.uint8), torch.arange(1000) % 4)
    a_train, a_val = stratified_split(split, 0.1, seed=3)
    b_train, b_val = stratified_split(split, 0.1, seed=3)
    _, c_val = stratified_split(split, 0.1, seed=4)
    assert torch.equal(a_val.images, b_val.images) and not torch.equal(a_val.images, c_val.images)
    assert torch.bincount(a_val.labels).tolist() == [25] * 4 and len(a_train) == 900


def test_device_loader_epochs_and_shards(device):
    """On the device the batches are gathered there, in the order the CPU gives (a resumed run
    may move between the two)."""
    on_cpu = Split(torch.arange(103).view(-1, 1, 1, 1), torch.arange(103))
    split = on_cpu.to(device)
    loader = DeviceLoader(split, 10, seed=1)
    batches = list(loader)
    assert all(x.device.type == y.device.type == device.type and torch.equal(x.view(-1), y) for x, y in batches)
    epoch0 = torch.cat([y for _, y in batches])
    assert epoch0.tolist() == torch.cat([y for _, y in DeviceLoader(on_cpu, 10, seed=1)]).tolist()
    assert sorted(epoch0.tolist()) == list(range(103)) and len(loader) == 11
    assert torch.equal(epoch0, torch.cat([y for _, y in loader]))  # same epoch, same order
    loader.set_epoch(1)
    assert not torch.equal(epoch0, torch.cat([y for _, y in loader]))
    shards = [torch.cat([y for _, y in DeviceLoader(split, 8, seed=1, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 51 and not set(shards[0].tolist()) & set(shards[1].tolist())
    assert len(DeviceLoader(split, 10, drop_last=True)) == 10
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(split, 0)


def test_device_loader_resumes_inside_an_epoch_in_the_saved_order():
    split = Split(torch.arange(103).view(-1, 1, 1, 1), torch.arange(103))
    loader = DeviceLoader(split, 10, seed=1, rank=1, world_size=2)
    loader.set_epoch(3)
    whole, order = [y for _, y in loader], loader.permutation()
    assert len(order) == 103 and sorted(order.tolist()) == list(range(103))
    resumed = DeviceLoader(split, 10, seed=7, rank=1, world_size=2)  # another seed: the saved order decides
    resumed.set_epoch(3, order=order, start=2)
    assert [y.tolist() for _, y in resumed] == [y.tolist() for y in whole[2:]] and len(resumed) == len(whole) == 6
    resumed.set_epoch(4)  # the next epoch starts at its beginning
    assert len(list(resumed)) == 6


def test_real_fashion_mnist(fashion_mnist_root, monkeypatch):
    monkeypatch.undo()
    ds = load_dataset("fashion_mnist", fashion_mnist_root, download=False, val_fraction=0)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    raw = fashion_mnist_root / "FashionMNIST" / "raw"  # read here without torchvision: the same values
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(idx_array(raw / "train-images-idx3-ubyte").copy()))
    assert ds.test.labels.tolist() == idx_array(raw / "t10k-labels-idx1-ubyte").tolist()
    assert ds.train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)
