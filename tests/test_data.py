import pickle
import struct

import numpy as np
import pytest
import torch

from hwnas.config import AugmentConfig, DataConfig
from hwnas.data import BatchStream, InMemoryImages, cutout, load_dataset, random_crop_flip, split_indices
from hwnas.errors import DataError


def test_digits_is_embedded_and_cifar_like():
    ds = load_dataset(DataConfig(dataset="digits"))
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    x, y = ds.train.batch(torch.arange(4), None, torch.Generator())
    assert x.shape == (4, 1, 32, 32) and ds.num_classes == 10
    assert set(ds.train.labels.tolist()) == set(range(10))


def test_split_is_fixed_disjoint_and_complete():
    a1, b1 = split_indices(100, 0.5)
    a2, b2 = split_indices(100, 0.5)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert len(a1) == 50 and not set(a1.tolist()) & set(b1.tolist())
    assert sorted(a1.tolist() + b1.tolist()) == list(range(100))
    a, b = split_indices(100, 0.8, subset=40)
    assert (len(a), len(b)) == (32, 8)
    with pytest.raises(DataError, match="empty"):
        split_indices(3, 0.1)


def _source(n=40):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return InMemoryImages(images, torch.arange(n) % 10, (0.0,), (1.0,))


def test_stream_resumes_exactly():
    source, idx = _source(), torch.arange(40)
    aug = AugmentConfig(crop_padding=1, flip=True, cutout=2)
    first = BatchStream(source, idx, 8, seed=5, augment=aug)
    batches = [next(first) for _ in range(12)]  # crosses into the third pass (5 batches per pass)
    second = BatchStream(source, idx, 8, seed=5, augment=aug)
    for _ in range(7):
        next(second)
    third = BatchStream(source, idx, 8, seed=5, augment=aug)
    third.load_state_dict(second.state_dict())
    for want in batches[7:]:
        got = next(third)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_stream_covers_each_image_once_per_pass_and_shards():
    source, idx = _source(), torch.arange(40)
    stream = BatchStream(source, idx, 8, seed=1)
    seen = torch.cat([next(stream)[1] for _ in range(5)])
    assert len(seen) == 40
    ranks = [BatchStream(source, idx, 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    values = [torch.cat([next(s)[0][:, 0, 0, 0] for _ in range(5)]) for s in ranks]
    assert sorted((torch.cat(values) * 255).round().long().tolist()) == list(range(40))
    with pytest.raises(DataError, match="larger than"):
        BatchStream(source, idx, 64, seed=1)


def test_crop_flip_and_cutout():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    flipped = random_crop_flip(x, AugmentConfig(flip=True), gen)
    n_flipped = sum(torch.equal(f, x[0].flip(-1)) for f in flipped)
    assert 10 < n_flipped < 54 and all(torch.equal(f, x[0]) or torch.equal(f, x[0].flip(-1)) for f in flipped)
    cropped = random_crop_flip(x, AugmentConfig(crop_padding=2), gen)
    assert cropped.shape == x.shape and (cropped == 0).any()  # some crops reach into the zero padding
    cut = cutout(torch.ones(64, 1, 8, 8), 4, gen)
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # a full 4x4 square, or one clipped at a corner


def _idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    _idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (20, 28, 28)))
    _idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, (20,)))
    _idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (5, 28, 28)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (5,)))
    ds = load_dataset(DataConfig(dataset="fashion-mnist", root=str(tmp_path)))
    assert (len(ds.train), len(ds.test), ds.channels, ds.image_size) == (20, 5, 1, 28)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="not a readable idx file"):
        load_dataset(DataConfig(dataset="fashion-mnist", root=str(tmp_path)))


def test_cifar10_folder_in_torchvision_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # torchvision checks md5 sums of the real files; point it at ours
    from torchvision.datasets import CIFAR10
    import hashlib

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    orig = CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta
    try:
        CIFAR10.train_list = [[n, md5(n)] for n in names[:5]]
        CIFAR10.test_list = [["test_batch", md5("test_batch")]]
        CIFAR10.meta = {"filename": "batches.meta", "key": "label_names", "md5": md5("batches.meta")}
        ds = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    finally:
        CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta = orig
    assert (len(ds.train), len(ds.test), ds.channels) == (20, 4, 3)
    x, _ = ds.train.batch(torch.arange(2), None, torch.Generator())
    assert x.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10", "imagenet"])
def test_missing_dataset_says_where_it_looked(tmp_path, dataset):
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset=dataset, root=str(tmp_path / "nowhere")))
    assert str(tmp_path / "nowhere") in str(info.value)


def test_imagenet_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (i * 100, 50, 20)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset(DataConfig(dataset="imagenet", root=str(tmp_path), image_size=32))
    x, y = ds.train.batch(torch.arange(4), AugmentConfig(), torch.Generator().manual_seed(0))
    x2, _ = ds.train.batch(torch.arange(4), AugmentConfig(), torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and ds.num_classes == 2 and torch.equal(x, x2)


def image_folder(root, splits):
    """An ImageFolder tree: {split: {class: images}} with small PNGs."""
    from PIL import Image

    for split, classes in splits.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), (i * 100, 50, 20)).save(root / split / cls / f"{i}.png")


@pytest.mark.parametrize("splits, message", [
    ({"train": {"cat": 2}, "val": {"cat": 1}}, "1 class folder"),
    ({"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "cow": 1}}, r"missing in val: \['dog'\], not in train: \['cow'\]"),
    ({"train": {"cat": 2, "dog": 2}, "val": {"cat": 1}}, r"missing in val: \['dog'\], not in train: none"),
])
def test_image_folder_classes_are_checked_at_load(tmp_path, splits, message):
    image_folder(tmp_path, splits)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(dataset="imagenet", root=str(tmp_path), image_size=32))


def test_unreadable_images_name_the_file(tmp_path):
    image_folder(tmp_path, {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    # the first image of a class is read at load
    first = tmp_path / "val" / "dog" / "0.png"
    first.write_bytes(first.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=f"image {first} cannot be read"):
        load_dataset(DataConfig(dataset="imagenet", root=str(tmp_path), image_size=32))
    # any other one when a batch reads it
    image_folder(tmp_path / "b", {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    later = tmp_path / "b" / "train" / "dog" / "1.png"
    later.write_bytes(b"not a png at all")
    ds = load_dataset(DataConfig(dataset="imagenet", root=str(tmp_path / "b"), image_size=32))
    with pytest.raises(DataError, match=f"image {later} cannot be read"):
        ds.train.batch(torch.arange(4), None, torch.Generator())
