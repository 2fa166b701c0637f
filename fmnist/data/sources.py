"""Find, check and prepare the four Fashion-MNIST IDX files in torchvision's layout.

Order of sources when files are missing: already under `root`, or their .gz there; the .gz of
Debian's `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`, recompressed, so
torchvision's gz md5 list does not apply; `$FMNIST_DEBIAN_DIR` names another folder of the four
.gz, as a GPU check's bundle does); torchvision's download; `apt-get install
dataset-fashion-mnist` when root on Debian, only from `fmnist-data` (training never installs
system packages). Files that are present but truncated or corrupt are never used nor silently
replaced: the error says how to fix.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fmnist.errors import DataError
from fmnist.run.locking import FileLock

log = logging.getLogger(__name__)

DEBIAN_DIR = Path(os.environ.get("FMNIST_DEBIAN_DIR", "/usr/share/datasets/fashion-mnist"))


@dataclass(frozen=True)
class IdxFile:
    name: str
    magic: int  # 2051 images, 2049 labels
    count: int
    size: int  # decompressed bytes
    sha256: str  # of the decompressed file: the real data set, whatever its source


FILES = (
    IdxFile(
        "train-images-idx3-ubyte",
        2051,
        60000,
        47040016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    IdxFile(
        "train-labels-idx1-ubyte",
        2049,
        60000,
        60008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    IdxFile(
        "t10k-images-idx3-ubyte",
        2051,
        10000,
        7840016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    IdxFile(
        "t10k-labels-idx1-ubyte",
        2049,
        10000,
        10008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
)


def raw_dir(root: str | Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def restore_hint(root: str | Path) -> str:
    return f"delete it and run `make data` (or `fmnist-data --root {root}`) to restore it"


def check_file(path: Path, spec: IdxFile, root: str | Path, full: bool = True) -> None:
    """Header, size and (when `full`) checksum; raises a one-line DataError naming the file."""
    size = path.stat().st_size
    if size != spec.size:
        raise DataError(
            f"{path} is truncated or wrong ({size:,} bytes, expected {spec.size:,}): "
            + restore_hint(root)
        )
    with path.open("rb") as f:
        magic, count = struct.unpack(">II", f.read(8))
    if magic != spec.magic or count != spec.count:
        raise DataError(
            f"{path} has a bad IDX header (magic {magic}, {count} items; expected {spec.magic}, "
            f"{spec.count}): " + restore_hint(root)
        )
    if full and sha256(path) != spec.sha256:
        raise DataError(f"{path} is corrupt (checksum mismatch): " + restore_hint(root))


def verify_raw(root: str | Path) -> None:
    """Every raw file's size, header and SHA-256 (about 0.2 s for the 55 MB)."""
    for spec in FILES:
        check_file(raw_dir(root) / spec.name, spec, root)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path, wait_s: float = 3600.0) -> Iterator[None]:
    """Exclusive lock across processes, so sweep jobs never prepare the data at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    lock.acquire(wait_s)  # another job preparing the data: wait for it
    try:
        yield
    finally:
        lock.release()


def _missing(root: Path) -> list[IdxFile]:
    return [spec for spec in FILES if not (raw_dir(root) / spec.name).exists()]


def _from_gz(root: Path, say: Callable[[str], None], tried: list[str]) -> bool:
    """The missing files from their .gz in the folder itself (put there by hand, or left by an
    earlier download), else from Debian's package (or the folder FMNIST_DEBIAN_DIR names). A
    damaged .gz is passed over (a download replaces it), never half used, and named in `tried`."""
    for folder in (raw_dir(root), DEBIAN_DIR):
        specs = _missing(root)
        if not specs or not all((folder / f"{spec.name}.gz").exists() for spec in specs):
            continue
        say(f"Decompressing Fashion-MNIST from {folder} into {raw_dir(root)}")
        for spec in specs:
            if not _decompress(folder / f"{spec.name}.gz", spec, root):
                say(f"{folder / spec.name}.gz is damaged: not used")
                tried.append(f"{folder / spec.name}.gz is damaged (delete it)")
                break
    return not _missing(root)


def _decompress(src: Path, spec: IdxFile, root: Path) -> bool:
    dest = raw_dir(root) / spec.name
    tmp = dest.with_name(dest.name + ".part")
    try:
        with gzip.open(src, "rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        check_file(tmp, spec, root)
    except (EOFError, zlib.error, gzip.BadGzipFile, DataError):  # not a disk that is full
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, dest)  # atomic: a crash never leaves a half file under the real name
    return True


def _from_torchvision(root: Path, say: Callable[[str], None]) -> str | None:
    """torchvision's own download (md5-checked); returns the error text on failure."""
    from torchvision.datasets import FashionMNIST

    say("Downloading Fashion-MNIST with torchvision")
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _from_apt(say: Callable[[str], None]) -> str | None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root on a system with apt-get"
    say("Installing Debian's dataset-fashion-mnist with apt-get (running as root)")
    for cmd in (
        ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0 and cmd[1] == "install":
            return None
    return (done.stderr.strip().splitlines() or ["apt-get failed"])[-1]


def ensure_data(
    root: str | Path,
    download: bool = True,
    say: Callable[[str], None] = log.info,
    system_packages: bool = False,
) -> Path:
    """Make sure the four checked IDX files are under `root`; return their directory.
    Only `fmnist-data` (`system_packages=True`) may install Debian's package; training never."""
    root = Path(root)
    with file_lock(root / ".fmnist-prepare.lock"):
        for spec in FILES:  # present files must be right: never train on partial data
            path = raw_dir(root) / spec.name
            if path.exists():
                check_file(path, spec, root, full=False)
        if not _missing(root):
            return raw_dir(root)
        raw_dir(root).mkdir(parents=True, exist_ok=True)
        tried = []
        if _from_gz(root, say, tried):
            pass
        elif not download:
            tried.append("downloads are off (data.download=false)")
        elif (err := _from_torchvision(root, say)) is None:
            pass
        else:
            tried.append(f"torchvision download failed ({err})")
            apt_err = (
                _from_apt(say) if system_packages else "not tried by training: run fmnist-data"
            )
            if apt_err is None and _from_gz(root, say, tried):
                pass
            else:
                tried.append(f"apt-get: {apt_err or 'package had no files'}")
        if _missing(root):
            names = ", ".join(spec.name for spec in _missing(root))
            raise DataError(
                f"Fashion-MNIST not found ({names} missing under {raw_dir(root)}; "
                + "; ".join(tried)
                + "). Fix one of: `fmnist-data` (or `make data`) fetches and checks them; "
                "put the four IDX files (or .gz) in that folder; "
                f"`apt-get install dataset-fashion-mnist` (Debian, files in {DEBIAN_DIR}); "
                "allow network access for torchvision's download; or set data.root / FMNIST_DATA "
                "to a folder that has them."
            )
        for spec in FILES:
            check_file(raw_dir(root) / spec.name, spec, root)
    return raw_dir(root)
