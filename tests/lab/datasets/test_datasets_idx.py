"""IDX reader, MNIST / Fashion-MNIST loaders and their verified download path.

Fixture files are generated in tmp; the download tests serve them from a local
http.server on 127.0.0.1 or an in-process opener (the machine has no internet).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import http.server
import io
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit.lab.datasets import (
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    DownloadError,
    default_cache_dir,
    idx,
    load_fashion_mnist,
    load_mnist,
    load_train_test,
    read_idx,
    split_test_set,
)
from dropkit.lab.datasets._common import RemoteFile, download_file
from tests.conftest import require_shared


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path_factory, monkeypatch):
    """Keep the user's real cache and $DROPKIT_DATA out of every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("DROPKIT_DATA", raising=False)


_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
_CODES[np.float64] = 0x0E


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, _CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_dir(folder: Path, n_train: int = 40, n_test: int = 30, gz: bool = True) -> dict:
    """Write the four MNIST-named files; returns the arrays by file stem."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array, gz)
    return arrays


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4)
    array = (array % 256 if dtype is np.uint8 else array).astype(dtype)
    tensor = read_idx(write_idx(tmp_path / "a.idx", array, gz))
    assert tuple(tensor.shape) == (2, 3, 4)
    np.testing.assert_array_equal(tensor.numpy(), array)
    tensor[0, 0, 0] = 1  # the tensor owns writable memory (no read-only numpy buffer)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(5, dtype=np.uint8)
    path = tmp_path / "labels-without-gz-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    assert read_idx(path).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "too short for an IDX header"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "has to start with two zero bytes"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "type code 0x07"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "truncated inside its header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00" * 3, "is truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x00" * 3, "longer than its header"),
    ],
)
def test_read_idx_rejects_malformed_files_naming_them(tmp_path, payload, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(payload)
    with pytest.raises(DataFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 4)
    with pytest.raises(DataFormatError, match=r"bad.gz is a damaged gzip file \(62 bytes\)"):
        read_idx(path)


@pytest.mark.parametrize("cut", [10, 200, -9])
def test_truncated_gzip_is_named_with_its_size(tmp_path, cut):
    # cut=-9 keeps the deflate stream but not the whole CRC/size trailer.
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    noise = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)  # incompressible
    data = gzip.compress(idx_bytes(noise))
    path.write_bytes(data[:cut])
    size = len(data[:cut])
    with pytest.raises(DataFormatError, match=rf"is a damaged gzip file \({size} bytes\)"):
        read_idx(path)


def test_gzip_with_a_flipped_byte_is_a_format_error(tmp_path):
    path = tmp_path / "x.gz"
    data = bytearray(gzip.compress(idx_bytes(np.arange(3000, dtype=np.uint8))))
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="is a damaged gzip file"):
        read_idx(path)


def test_truncated_raw_idx_gives_both_byte_counts(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8), False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"truncated: .* needs 3936 bytes .* has 3836$"):
        read_idx(path)
    gz = write_idx(tmp_path / "a.gz", np.zeros((5, 28, 28), np.uint8))
    gz.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]))
    with pytest.raises(DataFormatError, match="has 3836 once decompressed"):
        read_idx(gz)


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_reads_both_splits(tmp_path, gz):
    arrays = make_mnist_dir(tmp_path / "mnist", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_mnist(split, tmp_path, download=False, verify=False, cache_dir=tmp_path / "c")
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        np.testing.assert_array_equal(data.images.numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        np.testing.assert_array_equal(data.labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])
        assert len(data) == len(arrays[f"{prefix}-labels-idx1-ubyte"])
        assert f"MNIST {split}" in data.description and str(tmp_path / "mnist") in data.description


def test_data_dir_may_be_the_dataset_folder_or_its_parent_or_env(tmp_path, monkeypatch):
    make_mnist_dir(tmp_path / "mnist")
    options = dict(download=False, verify=False, cache_dir=tmp_path / "cache")
    assert len(load_mnist("test", tmp_path / "mnist", **options)) == 30
    assert len(load_mnist("test", tmp_path, **options)) == 30
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path))
    assert len(load_mnist("test", **options)) == 30


def test_nonexistent_data_dir_is_an_error_not_a_silent_fallback(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="is not an existing directory"):
        load_mnist("test", tmp_path / "typo", download=False)
    with pytest.raises(TypeError, match="has to be a path"):
        load_mnist("test", 3, download=False)


def test_missing_files_error_says_which_where_and_how(tmp_path):
    make_mnist_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("train", tmp_path, download=False, verify=False, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "missing train-images-idx3-ubyte.gz" in message
    assert "train-labels" not in message.split("Looked in")[0]  # only the missing file is named
    for folder in (tmp_path, tmp_path / "mnist", tmp_path / "c" / "mnist"):
        assert f"    {folder}\n" in message
    assert "download=True" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="split has to be one of .* but got 'validation'"):
        load_mnist("validation", tmp_path, download=False)
    with pytest.raises(ValueError, match="image data set has to be one of .* got 'cifar'"):
        load_train_test("cifar", tmp_path)
    with pytest.raises(ValueError, match="from_test_set has to be True, False or 'auto'"):
        load_train_test("mnist", tmp_path, from_test_set="sometimes")


def test_inconsistent_files_are_rejected(tmp_path):
    folder = tmp_path / "mnist"
    make_mnist_dir(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8))
    with pytest.raises(DataFormatError, match="has 30 images but .* has 29 labels"):
        load_mnist("test", folder, download=False, verify=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(30, 10, dtype=np.uint8))
    with pytest.raises(DataFormatError, match="has label 10; MNIST labels are 0..9"):
        load_mnist("test", folder, download=False, verify=False)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((30, 784), dtype=np.uint8))
    with pytest.raises(DataFormatError, match=r"images of shape \(N, rows, cols\)"):
        load_mnist("test", folder, download=False, verify=False)


@pytest.mark.parametrize("gz", [True, False])
def test_verify_rejects_a_file_whose_content_is_not_the_published_one(tmp_path, gz):
    make_mnist_dir(tmp_path / "mnist", gz=gz)
    content = "decompressed content" if gz else "content"
    with pytest.raises(ChecksumError, match=rf"its {content} \(23536 bytes\) has MD5 ") as info:
        load_mnist("test", tmp_path, download=False)
    message = str(info.value)
    assert "published MNIST t10k-images-idx3-ubyte has MD5 2646ac647ad5339dbf082846283269ea" in (
        message
    )
    # The CLI has no such flag, so the message must not send its users looking for one.
    assert "verify=False" not in message


def publish_fixture_md5(monkeypatch, folder: Path, name: str = "mnist") -> None:
    """Make ``folder``'s generated files the "published" ones of data set ``name``."""
    md5 = {}
    for path in folder.iterdir():
        data = path.read_bytes()
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        md5[path.name.removesuffix(".gz")] = hashlib.md5(data).hexdigest()
    spec = dataclasses.replace(idx.IMAGE_DATASETS[name], md5=md5)
    monkeypatch.setitem(idx.IMAGE_DATASETS, name, spec)


def test_content_not_gzip_wrapper_is_verified(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    arrays = make_mnist_dir(folder)
    publish_fixture_md5(monkeypatch, folder)
    # Re-compress at another level and with another mtime, as the shared copies were: the
    # .gz bytes (and their MD5) change, the content does not.
    for path in folder.glob("t10k-*.gz"):
        before = path.read_bytes()
        path.write_bytes(gzip.compress(gzip.decompress(before), compresslevel=1, mtime=12345))
        assert path.read_bytes() != before
    test = load_mnist("test", tmp_path, download=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(test.images.numpy(), arrays["t10k-images-idx3-ubyte"])


# --------------------------------------------------------------------------- splitting


def _labelled_set(n: int = 103) -> idx.ImageSet:
    images = torch.arange(n, dtype=torch.int64).to(torch.uint8).view(n, 1, 1).expand(n, 28, 28)
    labels = torch.arange(n) % 10
    return idx.ImageSet(images.clone(), labels, tuple("0123456789"), "fixture")


def test_split_test_set_is_a_stratified_seeded_partition():
    whole = _labelled_set()
    train, test = split_test_set(whole, train_fraction=0.8, seed=3)
    ids_train = train.images[:, 0, 0].tolist()
    ids_test = test.images[:, 0, 0].tolist()
    assert sorted(ids_train + ids_test) == list(range(103))
    for cls in range(10):
        members = int((whole.labels == cls).sum())
        assert int((train.labels == cls).sum()) == int(members * 0.8)
    assert torch.equal(train.labels, whole.labels[train.images[:, 0, 0].long()])
    again, _ = split_test_set(whole, train_fraction=0.8, seed=3)
    other, _ = split_test_set(whole, train_fraction=0.8, seed=4)
    assert torch.equal(again.images, train.images)
    assert not torch.equal(other.images, train.images)
    assert "not comparable" in train.description and "not comparable" in test.description


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, float("nan")])
def test_split_test_set_rejects_bad_fractions(fraction):
    with pytest.raises(
        ValueError, match=f"train_fraction has to be in \\(0, 1\\), but got {fraction}"
    ):
        split_test_set(_labelled_set(), train_fraction=fraction)
    with pytest.raises(TypeError, match="train_fraction has to be a float"):
        split_test_set(_labelled_set(), train_fraction="0.5")


def test_load_train_test_auto_falls_back_only_when_asked(tmp_path):
    folder = tmp_path / "mnist"
    make_mnist_dir(folder, n_test=50)
    options = dict(download=False, verify=False, cache_dir=tmp_path / "c")
    train, test = load_train_test("mnist", tmp_path, **options)
    assert (len(train), len(test)) == (40, 50)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_train_test("mnist", tmp_path, **options)
    train, test = load_train_test("mnist", tmp_path, from_test_set="auto", **options)
    assert (len(train), len(test)) == (40, 10)
    assert "split of MNIST test" in train.description
    for path in folder.glob("t10k-*"):
        path.unlink()
    with pytest.raises(DatasetNotFoundError, match="splitting the test set failed too"):
        load_train_test("mnist", tmp_path, from_test_set="auto", **options)


def test_status_reports_complete_partial_damaged_and_missing(tmp_path, monkeypatch):
    make_mnist_dir(tmp_path / "mnist")
    present, message = idx.status(tmp_path)
    # Files under MNIST's names that are not MNIST's: loading would fail, so not "complete".
    assert not present and "damaged" in message and "has MD5" in message
    publish_fixture_md5(monkeypatch, tmp_path / "mnist")
    present, message = idx.status(tmp_path)
    assert present and "complete (train 40, test 30" in message
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    present, message = idx.status(tmp_path)
    assert not present and "damaged gzip file (20 bytes)" in message
    write_idx(labels, np.arange(30, dtype=np.uint8) % 10)
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    present, message = idx.status(tmp_path)
    assert present and "partial" in message and "train-images-idx3-ubyte.gz" in message
    present, message = idx.status(tmp_path, "fashion-mnist")
    assert not present and "t10k-images-idx3-ubyte.gz" in message
    present, message = idx.status(tmp_path / "nope")
    assert not present and "not an existing directory" in message


# --------------------------------------------------------------------------- downloads


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 over ``tmp_path / "www"``; yields (root, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens once the socket is closed


def test_download_tries_mirrors_in_order_and_verifies(http_server, tmp_path):
    root, url = http_server
    payload = gzip.compress(idx_bytes(np.arange(7, dtype=np.uint8)))
    (root / "labels.gz").write_bytes(payload)
    remote = RemoteFile(
        "labels.gz", (_closed_port_url(), url), "md5:" + hashlib.md5(payload).hexdigest()
    )
    target = download_file(remote, tmp_path / "cache", timeout=5)
    assert target == tmp_path / "cache" / "labels.gz"
    assert target.read_bytes() == payload
    assert read_idx(target).tolist() == list(range(7))
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.gz"]


def test_download_checksum_mismatch_errors_and_keeps_nothing(http_server, tmp_path):
    root, url = http_server
    (root / "labels.gz").write_bytes(b"tampered bytes")
    expected = hashlib.sha256(b"the real bytes").hexdigest()
    remote = RemoteFile("labels.gz", (url,), "sha256:" + expected)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        download_file(remote, cache, timeout=5)
    message = str(info.value)
    assert "failed checksum verification" in message and expected in message
    assert hashlib.sha256(b"tampered bytes").hexdigest() in message
    assert list(cache.iterdir()) == []  # no target, no leftover .part file


def test_download_unreachable_mirrors_raise_download_error(tmp_path):
    remote = RemoteFile("x.gz", (_closed_port_url(),), "md5:" + "0" * 32)
    with pytest.raises(DownloadError, match="could not download x.gz"):
        download_file(remote, tmp_path / "cache", timeout=5)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionResetError("connection reset mid-transfer"),
        http.client.IncompleteRead(b"abcd", 10),
    ],
)
def test_interrupted_download_leaves_no_file(tmp_path, failure):
    class Broken(io.BytesIO):
        """Serves one chunk, then the connection drops."""

        calls = 0

        def read(self, size=-1):
            self.calls += 1
            if self.calls > 1:
                raise failure
            return b"abcd" * 1000

    written: list[int] = []

    def opener(url, timeout):
        written.append(1)
        return Broken()

    remote = RemoteFile("x.gz", ("http://mirror.invalid/",), "md5:" + "0" * 32)
    with pytest.raises(DownloadError, match="could not download x.gz") as info:
        download_file(remote, tmp_path / "cache", opener=opener)
    assert str(failure) in str(info.value)
    assert written == [1]
    assert list((tmp_path / "cache").iterdir()) == []


def test_remote_file_rejects_unknown_checksum_spec():
    with pytest.raises(ValueError, match="checksum of a.gz has to be '<algorithm>:<hex>'"):
        RemoteFile("a.gz", ("http://x/",), "crc32:1234")


@pytest.fixture
def fake_published_mnist(tmp_path, monkeypatch):
    """Generated MNIST files, with the MNIST spec's published MD5s replaced by theirs."""
    served = tmp_path / "served"
    make_mnist_dir(served, n_train=20, n_test=10)
    gz_md5 = {
        p.name[: -len(".gz")]: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()
    }
    md5 = {
        p.name[: -len(".gz")]: hashlib.md5(gzip.decompress(p.read_bytes())).hexdigest()
        for p in served.iterdir()
    }
    spec = dataclasses.replace(idx.IMAGE_DATASETS["mnist"], md5=md5, gz_md5=gz_md5)
    monkeypatch.setitem(idx.IMAGE_DATASETS, "mnist", spec)
    return served


def test_loader_downloads_once_into_the_cache(fake_published_mnist, tmp_path):
    requested: list[str] = []

    def opener(url, timeout):
        requested.append(url)
        return open(fake_published_mnist / url.rsplit("/", 1)[1], "rb")

    cache = tmp_path / "cache"
    first = load_mnist("train", download=True, cache_dir=cache, opener=opener)
    assert len(first) == 20
    assert [u.rsplit("/", 1)[1] for u in requested] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert requested[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    second = load_mnist("train", download=True, cache_dir=cache, opener=opener)
    assert len(requested) == 2  # served from the cache the second time
    assert torch.equal(first.images, second.images)


def test_loader_reports_failed_download_with_the_missing_files(fake_published_mnist, tmp_path):
    def opener(url, timeout):
        raise OSError(f"no route to {url}")

    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("test", download=True, cache_dir=tmp_path / "cache", opener=opener)
    message = str(info.value)
    assert "missing t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
    assert "Download was tried and failed" in message and "no route to" in message


def test_loader_checksum_mismatch_is_an_error_not_a_fallback(fake_published_mnist, tmp_path):
    def opener(url, timeout):
        return io.BytesIO(b"an HTML error page from a captive portal")

    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz failed checksum"):
        load_train_test("mnist", from_test_set="auto", cache_dir=cache, opener=opener)
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "dropkit" / "data"


# --------------------------------------------------------------------------- ../shared/data


def test_shared_mnist_test_set_and_published_checksums():
    require_shared("mnist", "t10k-images-idx3-ubyte.gz")
    data_dir = require_shared()
    test = load_mnist("test", data_dir, download=False)  # verify=True: published MD5s
    assert test.images.shape == (10000, 28, 28)
    assert torch.bincount(test.labels, minlength=10).sum() == 10000
    assert set(test.labels.unique().tolist()) == set(range(10))
    train_labels = read_idx(require_shared("mnist", "train-labels-idx1-ubyte.gz"))
    assert train_labels.shape == (60000,) and int(train_labels.max()) == 9


def test_shared_mnist_without_train_images_splits_the_test_set(tmp_path):
    source = require_shared("mnist", "t10k-images-idx3-ubyte.gz").parent
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(source / name, folder)
    train, test = load_train_test("mnist", tmp_path, from_test_set="auto", download=False)
    assert len(train) + len(test) == 10000
    assert 7990 <= len(train) <= 8000  # floor(0.8 * class size) per class loses < 1 each
    present, message = idx.status(tmp_path)
    assert present and "partial" in message


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_shared_rebuilt_gz_files_load_with_verification(name):
    # Issue 12, defect 1: the shared train images (and Fashion's test images) were
    # re-compressed, so their .gz MD5 is not the published one; their content's is.
    data_dir = require_shared(name, "train-images-idx3-ubyte.gz").parent
    train, test = load_train_test(name, data_dir, download=False)  # verify=True
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    counts = torch.bincount(train.labels, minlength=10).tolist()
    if name == "mnist":  # class counts from shared/data/README.md
        assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    else:
        assert counts == [6000] * 10
    present, message = idx.status(data_dir.parent, name)
    assert present and "complete (train 60000, test 10000" in message


def test_an_mnist_file_is_not_taken_for_fashion_mnist(tmp_path):
    mnist_labels = require_shared("mnist", "t10k-labels-idx1-ubyte.gz")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    # The real MNIST test files under Fashion-MNIST's (identical) names.
    shutil.copy(mnist_labels.with_name("t10k-images-idx3-ubyte.gz"), folder)
    shutil.copy(mnist_labels, folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ChecksumError, match="published Fashion-MNIST t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", tmp_path, download=False, cache_dir=tmp_path / "c")
