"""Datasets, the bilevel weight/architecture split, and resumable batch streams.

Small datasets (digits, Fashion-MNIST, CIFAR-10) are held in memory as uint8 tensors and augmented
per batch with a generator seeded by (seed, pass, batch), so a resumed run sees exactly the batches
an uninterrupted run would have seen. ImageNet is read from an ImageFolder tree the same way.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.config import AugmentConfig, DataConfig
from hwnas.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_ROOTS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "cifar10": "data/cifar10",
    "imagenet": "data/imagenet",
}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Source(Protocol):
    """Images addressed by index; `batch` loads, augments and normalises a list of them."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor, augment: AugmentConfig | None, generator: torch.Generator) -> Batch: ...


class InMemoryImages:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]):
        assert images.dtype == torch.uint8 and images.ndim == 4, "images are uint8 N,C,H,W"
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor, augment: AugmentConfig | None, generator: torch.Generator) -> Batch:
        x = self.images[indices].float().div_(255.0)
        if augment is not None:
            x = random_crop_flip(x, augment, generator)
        x = (x - self.mean) / self.std
        if augment is not None and augment.cutout:
            x = cutout(x, augment.cutout, generator)
        return x, self.labels[indices]


def random_crop_flip(x: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    if augment.crop_padding:
        p = augment.crop_padding
        padded = F.pad(x, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if augment.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    return x


def cutout(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one length x length square per image (clipped at the border), centred uniformly."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1), generator=generator)
    rows, cols = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    inside_y = (rows >= cy - length // 2) & (rows < cy + length - length // 2)
    inside_x = (cols >= cx - length // 2) & (cols < cx + length - length // 2)
    mask = ~(inside_y.view(n, 1, h, 1) & inside_x.view(n, 1, 1, w))
    return x * mask


class ImageFolderImages:
    """An ImageNet-style class-per-folder tree; train or eval transforms of the ImageNet recipe."""

    def __init__(self, root: Path, image_size: int, train: bool):
        from torchvision import datasets, transforms

        self.folder = datasets.ImageFolder(str(root))
        self.labels = torch.tensor(self.folder.targets)
        normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if train:
            self.train_transform = transforms.Compose([
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                *normalize,
            ])
        else:
            self.train_transform = None
        self.eval_transform = transforms.Compose([
            transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size), *normalize,
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int):
        """The image at `index`, or a DataError naming the file when it cannot be decoded."""
        path = self.folder.samples[index][0]
        try:
            return self.folder.loader(path)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated or corrupt files
            raise DataError(f"image {path} cannot be read ({exc}); remove or replace it") from None

    def check(self) -> None:
        """A readable first image in every class: a folder of broken files fails at load, not mid-run."""
        first: dict[int, int] = {}
        for index, (_, label) in enumerate(self.folder.samples):
            first.setdefault(label, index)
        for index in first.values():
            self.read(index)

    def batch(self, indices: torch.Tensor, augment: AugmentConfig | None, generator: torch.Generator) -> Batch:
        transform = self.train_transform if augment is not None and self.train_transform else self.eval_transform
        images = []
        for i in indices.tolist():
            image = self.read(i)
            # torchvision's random transforms draw from the global RNG: fork it, seeded per image.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                images.append(transform(image))
        return torch.stack(images), self.labels[indices]


@dataclass
class Dataset:
    name: str
    train: Source
    test: Source
    num_classes: int
    channels: int
    image_size: int


def load_dataset(cfg: DataConfig) -> Dataset:
    loaders = {"digits": _digits, "fashion-mnist": _fashion_mnist, "cifar10": _cifar10, "imagenet": _imagenet}
    dataset = loaders[cfg.dataset](cfg)
    if cfg.channels and cfg.channels != dataset.channels:
        dataset = Dataset(dataset.name, _as_rgb(dataset.train), _as_rgb(dataset.test), dataset.num_classes,
                          cfg.channels, dataset.image_size)
    return dataset


def _as_rgb(source: Source) -> Source:
    """A gray in-memory dataset with its one channel repeated three times."""
    if not isinstance(source, InMemoryImages) or source.images.shape[1] != 1:
        raise DataError("data.channels: 3 repeats the channel of a gray dataset (digits, fashion-mnist) only")
    return InMemoryImages(source.images.expand(-1, 3, -1, -1).contiguous(), source.labels,
                          tuple(source.mean.flatten().tolist()) * 3, tuple(source.std.flatten().tolist()) * 3)


def _to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _digits(cfg: DataConfig) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), resized to image_size (default 32); 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    images = _to_size(images, cfg.image_size or 32)
    labels = torch.from_numpy(digits.target)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=digits.target,
                                           random_state=0)
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    mean, std = _stats(images[train_idx])
    return Dataset("digits", InMemoryImages(images[train_idx], labels[train_idx], mean, std),
                   InMemoryImages(images[test_idx], labels[test_idx], mean, std),
                   10, 1, images.shape[-1])


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("bad magic number")
        shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"{path}: not a readable idx file ({exc}); re-install or re-download it") from None


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _fashion_mnist(cfg: DataConfig) -> Dataset:
    root = Path(cfg.root or DEFAULT_ROOTS["fashion-mnist"])
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find(root, stem) for stem in stems]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(stems, paths) if p is None]
        raise DataError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); install it with "
            "`apt-get install dataset-fashion-mnist` or set data.root to a folder holding the idx files"
        )
    train_x, train_y, test_x, test_y = (torch.from_numpy(_read_idx(p).copy()) for p in paths)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"{root}: image and label files disagree in length; the files are truncated or mixed")
    size = cfg.image_size or 28
    train_x, test_x = _to_size(train_x.unsqueeze(1), size), _to_size(test_x.unsqueeze(1), size)
    mean, std = (0.2860,), (0.3530,)
    return Dataset("fashion-mnist", InMemoryImages(train_x, train_y, mean, std),
                   InMemoryImages(test_x, test_y, mean, std), 10, 1, size)


def _cifar10(cfg: DataConfig) -> Dataset:
    from torchvision.datasets import CIFAR10

    root = Path(cfg.root or DEFAULT_ROOTS["cifar10"])
    try:
        train = CIFAR10(str(root), train=True, download=cfg.download)
        test = CIFAR10(str(root), train=False, download=cfg.download)
    except RuntimeError as exc:
        raise DataError(
            f"CIFAR-10 not found in {root} ({exc}); put torchvision's `cifar-10-batches-py` folder there, "
            "or set data.download=true where a network exists"
        ) from None
    except Exception as exc:  # a truncated or foreign pickle
        raise DataError(f"CIFAR-10 in {root} cannot be read ({type(exc).__name__}: {exc})") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    (train_x, train_y), (test_x, test_y) = tensors(train), tensors(test)
    return Dataset("cifar10", InMemoryImages(train_x, train_y, CIFAR_MEAN, CIFAR_STD),
                   InMemoryImages(test_x, test_y, CIFAR_MEAN, CIFAR_STD), 10, 3, 32)


def _imagenet(cfg: DataConfig) -> Dataset:
    root = Path(cfg.root or DEFAULT_ROOTS["imagenet"])
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(
            f"ImageNet not found: expected class folders under {root}/train and {root}/val "
            "(torchvision ImageFolder layout); set data.root"
        )
    size = cfg.image_size or 224
    try:
        train = ImageFolderImages(root / "train", size, train=True)
        test = ImageFolderImages(root / "val", size, train=False)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"ImageNet in {root} cannot be read: {exc}") from None
    classes, val_classes = train.folder.classes, test.folder.classes
    if len(classes) < 2:
        raise DataError(f"{root}/train has {len(classes)} class folder(s); a classifier needs at least two")
    if classes != val_classes:
        missing, extra = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
        raise DataError(f"{root}/val has other classes than {root}/train (labels would be mixed up): "
                        f"missing in val: {missing or 'none'}, not in train: {extra or 'none'}")
    train.check()
    test.check()
    return Dataset("imagenet", train, test, len(classes), 3, size)


def subset_indices(n: int, subset: int | None = None) -> torch.Tensor:
    """A fixed (seed-independent) shuffle of range(n), cut to `subset` images when given."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[: min(subset, n)] if subset is not None else order


def split_indices(n: int, train_portion: float, subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (seed-independent) split of the training set into the weight part and the architecture part."""
    order = subset_indices(n, subset)
    cut = int(round(len(order) * train_portion))
    if cut < 1 or cut >= len(order):
        raise DataError(f"train_portion {train_portion} leaves one side of the split of {len(order)} images empty")
    return order[:cut].sort().values, order[cut:].sort().values


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (torch generators take at most 64 bits)."""
    value = 0
    for n in numbers:
        value = (value * 1_000_003 + n) % (2**63 - 1)
    return value


class BatchStream:
    """An endless, resumable stream of shuffled batches over `indices` of a source.

    The order of pass p comes from seed and p alone, and each batch's augmentation from
    (seed, p, batch), so `state_dict()` (pass, position) is all a checkpoint needs. With
    `world_size > 1` each rank takes its own shard of every pass (for DistributedDataParallel).
    """

    def __init__(self, source: Source, indices: torch.Tensor, batch_size: int, seed: int,
                 augment: AugmentConfig | None = None, rank: int = 0, world_size: int = 1):
        self.source, self.indices, self.batch_size = source, indices, batch_size
        self.seed, self.augment, self.rank, self.world_size = seed, augment, rank, world_size
        self.pass_index, self.position = 0, 0
        self._order_cache: tuple[int, torch.Tensor] | None = None
        if self.batches_per_pass == 0:
            raise DataError(
                f"batch size {batch_size} x {world_size} process(es) is larger than the {len(indices)} images "
                "of this split; lower the batch size or use more data"
            )

    @property
    def batches_per_pass(self) -> int:
        return len(self.indices) // (self.batch_size * self.world_size)

    def _order(self) -> torch.Tensor:
        if self._order_cache is None or self._order_cache[0] != self.pass_index:
            gen = torch.Generator().manual_seed(_mix(self.seed, self.pass_index))
            order = self.indices[torch.randperm(len(self.indices), generator=gen)]
            used = self.batches_per_pass * self.batch_size * self.world_size
            self._order_cache = (self.pass_index, order[:used][self.rank:: self.world_size])
        return self._order_cache[1]

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Batch:
        if self.position >= self.batches_per_pass:
            self.pass_index, self.position = self.pass_index + 1, 0
        start = self.position * self.batch_size
        chosen = self._order()[start:start + self.batch_size]
        seed = _mix(self.seed, self.pass_index, self.position)
        self.position += 1
        return self.source.batch(chosen, self.augment, torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict[str, int]:
        return {"pass_index": self.pass_index, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_index, self.position = int(state["pass_index"]), int(state["position"])


def iterate_once(source: Source, indices: torch.Tensor | None, batch_size: int) -> Iterator[Batch]:
    """Every image of `indices` (all when None) once, in order, without augmentation: for evaluation."""
    if indices is None:
        indices = torch.arange(len(source))
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(indices), batch_size):
        yield source.batch(indices[start:start + batch_size], None, generator)
