"""Small datasets written in the real on-disk formats (idx .gz, CIFAR pickles, image folders).

They exercise the loading code exactly as real files would; their pixels are random, so nothing
trained on them is ever reported as a result.
"""

import gzip
import pickle
import pickletools
import struct

import numpy as np
from PIL import Image


def write_idx(path, array, gz=True):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion_mnist(root, n_train=100, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    raw = root / "FashionMNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return raw


def python2_pickle(obj) -> bytes:
    """``obj`` pickled as the CIFAR files were, by Python 2: its text (keys, class and file names) as
    byte strings, which Python 3 reads as str with ``encoding="latin1"`` (torchvision) and as bytes
    with ``encoding="bytes"``. Protocol 2 from Python 3 writes them as unicode; those opcodes are
    rewritten to SHORT_BINSTRING, the rest (the pixel array) is left as it is."""
    texts = set()

    def collect(value):
        if isinstance(value, str):
            texts.add(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                collect(k)
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(obj)
    data, out, last = pickle.dumps(obj, protocol=2), bytearray(), 0
    for op, arg, pos in pickletools.genops(data):
        if op.name == "BINUNICODE" and arg in texts:
            encoded = arg.encode("latin1")
            out += data[last:pos] + b"U" + bytes([len(encoded)]) + encoded
            last = pos + 5 + len(arg.encode("utf-8"))
    return bytes(out + data[last:])


def _cifar_batch(rng, name, per_batch, label_key, num_classes):
    return {
        "batch_label": name,
        label_key: [i % num_classes for i in range(per_batch)],
        "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
        "filenames": [f"{i}.png" for i in range(per_batch)],
    }


def make_cifar10(root, per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(python2_pickle(_cifar_batch(rng, name, per_batch, "labels", 10)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(python2_pickle({"label_names": names, "num_vis": 3072}))
    return folder


def make_cifar100(root, per_split=300):
    """CIFAR-100's layout: one train and one test file, 100 fine classes (the coarse ones too)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        batch = _cifar_batch(rng, name, per_split, "fine_labels", 100)
        batch["coarse_labels"] = [label // 5 for label in batch["fine_labels"]]
        (folder / name).write_bytes(python2_pickle(batch))
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"group_{i:02d}" for i in range(20)],
    }
    (folder / "meta").write_bytes(python2_pickle(meta))
    return folder


def write_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 30, 3), value, dtype=np.uint8)).save(path)
