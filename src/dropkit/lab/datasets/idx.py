"""IDX files and the MNIST / Fashion-MNIST data sets built from them.

IDX (LeCun et al., 1998, "Gradient-based learning applied to document
recognition"; format described on the MNIST page) is a big-endian array format:
two zero bytes, a type code, the number of dimensions, one uint32 per dimension,
then the values in row-major order. MNIST and Fashion-MNIST (Xiao, Rasul and
Vollgraf, 2017, "Fashion-MNIST: a novel image dataset for benchmarking machine
learning algorithms") ship four gzipped IDX files each.

Use :func:`load_mnist` / :func:`load_fashion_mnist` for one split,
:func:`load_train_test` for a (train, test) pair that can fall back to splitting
the 10k test set when the training images are absent, and :func:`read_idx` for
any IDX file. Images come back as ``uint8`` tensors of shape ``(N, 28, 28)`` and
labels as ``int64`` tensors of shape ``(N,)``; scaling is the caller's choice.

Example::

    train, test = load_train_test("mnist", "../shared/data", from_test_set="auto")
    x = train.images.float().div_(255).unsqueeze(1)   # (N, 1, 28, 28)
    print(train.description)
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from dropkit.lab.datasets._common import (
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    DownloadError,
    Opener,
    PathLike,
    RemoteFile,
    cache_root,
    download_file,
    find_file,
    once_per_version,
    search_dirs,
)

__all__ = [
    "ImageSet",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_train_test",
    "split_test_set",
    "status",
    "IMAGE_DATASETS",
]

# IDX type code -> (numpy big-endian dtype, torch dtype)
_IDX_TYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_GZIP_MAGIC = b"\x1f\x8b"

Split = Literal["train", "test"]
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class _ImageDatasetSpec:
    name: str
    title: str
    subfolders: tuple[str, ...]
    mirrors: tuple[str, ...]
    # file stem -> published MD5 of the uncompressed IDX file: what every local file is
    # checked against, compressed or not, because a gzip wrapper is not the data (a copy
    # re-compressed at another level or mtime holds the same bytes under another .gz MD5).
    md5: dict[str, str]
    # file stem -> published MD5 of the mirrors' .gz file: checks a download as it streams.
    gz_md5: dict[str, str]
    classes: tuple[str, ...]
    homepage: str

    def files(self, split: str) -> tuple[str, str]:
        prefix = "train" if split == "train" else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def remote(self, stem: str) -> RemoteFile:
        return RemoteFile(stem + ".gz", self.mirrors, "md5:" + self.gz_md5[stem])


# The published MD5s, as listed by torchvision and in shared/data/*/SOURCE.md (MNIST) and
# by the zalandoresearch README (Fashion-MNIST's .gz) and shared/data/README.md (contents).
IMAGE_DATASETS: dict[str, _ImageDatasetSpec] = {
    "mnist": _ImageDatasetSpec(
        name="mnist",
        title="MNIST",
        subfolders=("mnist", "MNIST/raw", "MNIST"),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        gz_md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        classes=tuple(str(d) for d in range(10)),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": _ImageDatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        subfolders=("fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        gz_md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
}


@dataclass(frozen=True)
class ImageSet:
    """One split of an image-classification data set.

    ``images``: ``uint8 (N, 28, 28)``; ``labels``: ``int64 (N,)`` in ``[0, len(classes))``;
    ``description`` says what the split is and where it came from (quote it in reports).
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    description: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """``(content, was_compressed)`` of ``path``."""
    with open(path, "rb") as handle:
        raw = handle.read()
    # Decide by content, not by suffix: people gunzip files and keep the name, or vice versa.
    if raw[:2] != _GZIP_MAGIC:
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(
            f"{path} is a damaged gzip file ({len(raw)} bytes): {exc}; replace it with the "
            f"original"
        ) from exc


def _parse_idx(data: bytes, path: Path, compressed: bool = False) -> Tensor:
    if len(data) < 4:
        raise DataFormatError(f"{path} is {len(data)} bytes long, too short for an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataFormatError(
            f"{path} is not an IDX file: it has to start with two zero bytes, but starts with "
            f"{data[:2].hex()}"
        )
    if type_code not in _IDX_TYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_TYPES)
        raise DataFormatError(
            f"{path} has IDX type code 0x{type_code:02X}; known codes are {known}"
        )
    if ndim == 0:
        raise DataFormatError(f"{path} declares 0 dimensions; IDX arrays have at least one")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFormatError(
            f"{path} is truncated inside its header: {ndim} dimensions need {header_len} bytes, "
            f"the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    np_dtype, torch_dtype = _IDX_TYPES[type_code]
    itemsize = np.dtype(np_dtype).itemsize
    expected = header_len + math.prod(shape) * itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise DataFormatError(
            f"{path} is {kind}: shape {tuple(shape)} of {np.dtype(np_dtype).name} needs "
            f"{expected} bytes including the header, the file has {len(data)}"
            + (" once decompressed" if compressed else "")
        )
    array = np.frombuffer(data, dtype=np_dtype, offset=header_len).reshape(shape)
    # astype to native byte order also copies, so the tensor owns writable memory.
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).to(torch_dtype)


def read_idx(path: PathLike) -> Tensor:
    """Read an IDX file (gzip-compressed or raw) into a tensor of its stored dtype and shape.

    Raises :class:`DataFormatError` naming the file when the gzip stream is damaged,
    the header is malformed, the type code is unknown, or the payload length
    disagrees with the header (with both byte counts).

    Example::

        labels = read_idx("t10k-labels-idx1-ubyte.gz")   # uint8, shape (10000,)
    """
    path = Path(path)
    data, compressed = _read_bytes(path)
    return _parse_idx(data, path, compressed)


def _spec(name: str) -> _ImageDatasetSpec:
    if name not in IMAGE_DATASETS:
        raise ValueError(
            f"image data set has to be one of {tuple(IMAGE_DATASETS)}, but got {name!r}"
        )
    return IMAGE_DATASETS[name]


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split has to be one of {_SPLITS}, but got {split!r}")


def _how_to_get(spec: _ImageDatasetSpec, stems: list[str], cache: Path) -> str:
    urls = "\n".join(f"    {spec.remote(stem).urls[0]}" for stem in stems)
    return (
        f"To get them: call with download=True (fetches into {cache} with MD5 verification), "
        f"or download\n{urls}\n  by hand into a folder and pass it as data_dir "
        f"(or set $DROPKIT_DATA). See {spec.homepage}."
    )


def _locate(
    spec: _ImageDatasetSpec,
    stems: list[str],
    data_dir: Optional[PathLike],
    cache_dir: Optional[PathLike],
    download: bool,
    opener: Optional[Opener],
) -> dict[str, Path]:
    dirs = search_dirs(spec.name, data_dir, spec.subfolders, cache_dir)
    found: dict[str, Path] = {}
    for stem in stems:
        path = find_file(dirs, (stem + ".gz", stem))
        if path is not None:
            found[stem] = path
    missing = [stem for stem in stems if stem not in found]
    cache = cache_root(spec.name, cache_dir)
    download_errors: list[str] = []
    if missing and download:
        for stem in missing:
            try:
                found[stem] = download_file(spec.remote(stem), cache, opener=opener)
            except DownloadError as exc:
                download_errors.append(str(exc))
        missing = [stem for stem in stems if stem not in found]
    if missing:
        looked = "\n".join(f"    {d}" for d in dirs)
        names = ", ".join(f"{stem}.gz" for stem in missing)
        tried = ""
        if download_errors:
            tried = "\n  Download was tried and failed:\n  " + "\n  ".join(download_errors)
        raise DatasetNotFoundError(
            f"{spec.title}: missing {names} (also accepted uncompressed, without .gz).\n"
            f"  Looked in:\n{looked}{tried}\n  {_how_to_get(spec, missing, cache)}"
        )
    return found


def _checksum_error(path: Path, spec: _ImageDatasetSpec, stem: str, data: bytes,
                    actual: str, compressed: bool) -> ChecksumError:
    content = "decompressed content" if compressed else "content"
    return ChecksumError(
        f"{path}: its {content} ({len(data)} bytes) has MD5 {actual}, but the published "
        f"{spec.title} {stem} has MD5 {spec.md5[stem]}. It is a damaged copy or a file of "
        f"another data set (MNIST and Fashion-MNIST use the same file names); replace it "
        f"with the original (see {spec.homepage})"
    )


def _read_checked(path: Path, spec: _ImageDatasetSpec, stem: str, verify: bool) -> Tensor:
    data, compressed = _read_bytes(path)
    # Parse first: a truncated file is better explained by its byte counts than by a digest.
    array = _parse_idx(data, path, compressed)
    if verify:
        # MNIST and Fashion-MNIST use the same file names: the digest is what tells a
        # Fashion-MNIST file from an MNIST one left in the wrong folder.
        actual = hashlib.md5(data).hexdigest()
        if actual != spec.md5[stem]:
            raise _checksum_error(path, spec, stem, data, actual, compressed)
    return array


def _load(
    spec: _ImageDatasetSpec,
    split: str,
    data_dir: Optional[PathLike],
    *,
    download: bool,
    cache_dir: Optional[PathLike],
    verify: bool,
    opener: Optional[Opener],
) -> ImageSet:
    _check_split(split)
    image_stem, label_stem = spec.files(split)
    paths = _locate(spec, [image_stem, label_stem], data_dir, cache_dir, download, opener)
    images = _read_checked(paths[image_stem], spec, image_stem, verify)
    labels = _read_checked(paths[label_stem], spec, label_stem, verify)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise DataFormatError(
            f"{paths[image_stem]} should hold uint8 images of shape (N, rows, cols), but holds "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    if labels.dim() != 1 or labels.dtype != torch.uint8:
        raise DataFormatError(
            f"{paths[label_stem]} should hold uint8 labels of shape (N,), but holds "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{spec.title} {split}: {paths[image_stem]} has {images.shape[0]} images but "
            f"{paths[label_stem]} has {labels.shape[0]} labels"
        )
    n_classes = len(spec.classes)
    if labels.numel() and int(labels.max()) >= n_classes:
        raise DataFormatError(
            f"{paths[label_stem]} has label {int(labels.max())}; {spec.title} labels are "
            f"0..{n_classes - 1}"
        )
    description = f"{spec.title} {split} ({images.shape[0]} images) from {paths[image_stem].parent}"
    return ImageSet(images, labels.long(), spec.classes, description)


def load_mnist(
    split: Split = "train",
    data_dir: Optional[PathLike] = None,
    *,
    download: bool = True,
    cache_dir: Optional[PathLike] = None,
    verify: bool = True,
    opener: Optional[Opener] = None,
) -> ImageSet:
    """Load one MNIST split: 60000 (train) or 10000 (test) 28x28 digit images.

    Looks in ``data_dir`` (else ``$DROPKIT_DATA``), then in the cache; with
    ``download=True`` missing files are fetched once into the cache, checked
    against the published MD5 of the ``.gz`` as they stream. ``verify`` checks
    every file read, compressed or not, against the published MD5 of the
    *uncompressed* IDX file: a re-compressed copy holds the same data under
    another ``.gz`` digest, and the check catches a Fashion-MNIST file mistaken for
    an MNIST one (same file names). ``verify=False`` reads files of your own
    making under these names (e.g. a subset).
    ``opener(url, timeout=...)`` replaces :func:`urllib.request.urlopen` (tests, proxies).

    Example::

        test = load_mnist("test", "../shared/data", download=False)
        assert test.images.shape == (10000, 28, 28)
    """
    return _load(
        IMAGE_DATASETS["mnist"],
        split,
        data_dir,
        download=download,
        cache_dir=cache_dir,
        verify=verify,
        opener=opener,
    )


def load_fashion_mnist(
    split: Split = "train",
    data_dir: Optional[PathLike] = None,
    *,
    download: bool = True,
    cache_dir: Optional[PathLike] = None,
    verify: bool = True,
    opener: Optional[Opener] = None,
) -> ImageSet:
    """Load one Fashion-MNIST split: 60000 (train) or 10000 (test) 28x28 clothing images.

    Same look-up, download and verification rules as :func:`load_mnist`; the ten
    class names are in ``ImageSet.classes``.
    """
    return _load(
        IMAGE_DATASETS["fashion-mnist"],
        split,
        data_dir,
        download=download,
        cache_dir=cache_dir,
        verify=verify,
        opener=opener,
    )


def split_test_set(
    test: ImageSet, train_fraction: float = 0.8, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Split one set into disjoint (train, test) parts for small experiments.

    A seeded random permutation, stratified by class so that every class keeps
    ``train_fraction`` of its examples (rounded down) in the training part. Used
    when the real training images are absent: the results are NOT comparable with
    numbers on the standard 60k/10k split, and both descriptions say so.
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)):
        raise TypeError(f"train_fraction has to be a float in (0, 1), but got {train_fraction!r}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction has to be in (0, 1), but got {train_fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    train_idx: list[Tensor] = []
    test_idx: list[Tensor] = []
    for cls in range(len(test.classes)):
        members = torch.nonzero(test.labels == cls).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        cut = int(members.numel() * train_fraction)
        train_idx.append(members[:cut])
        test_idx.append(members[cut:])
    train_order = torch.cat(train_idx)
    test_order = torch.cat(test_idx)
    # Shuffle across classes too, so a caller taking the first k rows gets every class.
    train_order = train_order[torch.randperm(train_order.numel(), generator=generator)]
    test_order = test_order[torch.randperm(test_order.numel(), generator=generator)]
    note = (
        f"split of {test.description} with train_fraction={train_fraction}, seed={seed}; "
        f"not comparable with the standard train/test split"
    )
    return (
        ImageSet(
            test.images[train_order],
            test.labels[train_order],
            test.classes,
            f"train part ({train_order.numel()} images) of a {note}",
        ),
        ImageSet(
            test.images[test_order],
            test.labels[test_order],
            test.classes,
            f"test part ({test_order.numel()} images) of a {note}",
        ),
    )


def load_train_test(
    name: str,
    data_dir: Optional[PathLike] = None,
    *,
    from_test_set: Union[bool, Literal["auto"]] = False,
    train_fraction: float = 0.8,
    seed: int = 0,
    download: bool = True,
    cache_dir: Optional[PathLike] = None,
    verify: bool = True,
    opener: Optional[Opener] = None,
) -> tuple[ImageSet, ImageSet]:
    """(train, test) for ``name`` in ``IMAGE_DATASETS`` ("mnist" or "fashion-mnist").

    ``from_test_set``: False uses the standard split; True always splits the 10k
    test set with :func:`split_test_set`; ``"auto"`` uses the standard split when
    its training files can be found (or downloaded) and otherwise splits the test
    set, saying so in both descriptions. Only ``"auto"`` ever falls back.

    Example::

        train, test = load_train_test("mnist", "../shared/data", from_test_set="auto",
                                      download=False)
        print(train.description)   # "train part (7997 images) of a split of MNIST test ..."
    """
    spec = _spec(name)
    if from_test_set not in (True, False, "auto"):
        raise ValueError(
            f"from_test_set has to be True, False or 'auto', but got {from_test_set!r}"
        )
    options = dict(download=download, cache_dir=cache_dir, verify=verify, opener=opener)
    if from_test_set is True:
        test = _load(spec, "test", data_dir, **options)
        return split_test_set(test, train_fraction, seed)
    try:
        train = _load(spec, "train", data_dir, **options)
    except DatasetNotFoundError as missing_train:
        if from_test_set != "auto":
            raise
        try:
            test = _load(spec, "test", data_dir, **options)
        except DatasetNotFoundError as missing_test:
            raise DatasetNotFoundError(
                f"{missing_train}\n  Falling back to splitting the test set failed too:\n"
                f"  {missing_test}"
            ) from missing_test
        return split_test_set(test, train_fraction, seed)
    return train, _load(spec, "test", data_dir, **options)


def _check_file(path: Path, spec: _ImageDatasetSpec, stem: str) -> tuple[int, Optional[str]]:
    """(examples, None) or (0, the loader's error): status() reads every file in full,
    because a damaged one must not be called "complete"."""
    def check() -> tuple[int, Optional[str]]:
        try:
            return int(_read_checked(path, spec, stem, verify=True).shape[0]), None
        except (DataFormatError, ChecksumError) as exc:
            return 0, str(exc)

    return once_per_version(f"idx:{spec.md5[stem]}", [path], check)


def status(data_dir: Optional[PathLike] = None, name: str = "mnist") -> tuple[bool, str]:
    """Whether data set ``name`` can be loaded from local files, and a one-paragraph message.

    Every file found is read and checked as the loader checks it (gzip stream,
    IDX header and length, published MD5 of the content), so "complete" means
    the load will succeed. ``present`` is True when the test split is sound and
    the training split is either sound or absent (the training set can then be
    built with ``from_test_set="auto"``); a damaged file makes it False and the
    message quotes the loader's error. Never downloads.
    """
    spec = _spec(name)
    try:
        dirs = search_dirs(spec.name, data_dir, spec.subfolders)
    except (DatasetNotFoundError, TypeError) as exc:
        return False, f"{spec.title}: {exc}"
    stems = [*spec.files("train"), *spec.files("test")]
    found = {stem: find_file(dirs, (stem + ".gz", stem)) for stem in stems}
    checked = {stem: _check_file(path, spec, stem) for stem, path in found.items() if path}
    damaged = [error for _, error in checked.values() if error is not None]
    if damaged:
        return False, f"{spec.title}: damaged: {damaged[0]}"
    missing = [stem + ".gz" for stem, path in found.items() if path is None]
    test_ok = all(found[stem] is not None for stem in spec.files("test"))
    counts = {split: checked[spec.files(split)[0]][0] for split in _SPLITS
              if spec.files(split)[0] in checked}
    if not missing:
        where = found[spec.files("train")[0]].parent
        return True, (
            f"{spec.title}: complete (train {counts['train']}, test {counts['test']}; "
            f"MD5 of every file's content matches the published one) in {where}"
        )
    looked = ", ".join(str(d) for d in dirs)
    if test_ok:
        where = found[spec.files("test")[0]].parent
        return True, (
            f"{spec.title}: partial in {where}: missing {', '.join(missing)}; the test set is "
            f"present, so from_test_set='auto' splits its {counts['test']} images into "
            f"train/test (not comparable with the standard split), or download=True fetches "
            f"the rest"
        )
    return False, (
        f"{spec.title}: missing {', '.join(missing)} (looked in {looked}); "
        f"download=True fetches them into {cache_root(spec.name)}, see {spec.homepage}"
    )
