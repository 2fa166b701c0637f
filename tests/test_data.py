import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision import datasets, transforms

from fmnist.data import sources
from fmnist.data.loaders import MemoryLoader, TorchvisionLoader, split_indices
from fmnist.data.sources import FILES, DataError, ensure_data, raw_dir
from fmnist.data.tensors import load_tensors


def test_real_data_is_checked(data_root):
    tensors = load_tensors(data_root)
    assert tensors["train_images"].shape == (60000, 28, 28)
    assert tensors["test_images"].shape == (10000, 28, 28)
    assert tensors["train_images"].dtype == torch.uint8
    assert sorted(tensors["train_labels"].unique().tolist()) == list(range(10))
    assert torch.bincount(tensors["test_labels"]).tolist() == [1000] * 10


def _copy_raw(data_root: Path, dest: Path) -> Path:
    raw = raw_dir(dest)
    raw.mkdir(parents=True)
    for spec in FILES:
        shutil.copy(raw_dir(data_root) / spec.name, raw / spec.name)
    return raw


def test_truncated_file_is_a_one_line_error(data_root, tmp_path):
    raw = _copy_raw(data_root, tmp_path)
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_tensors(tmp_path)
    message = str(info.value)
    assert (
        "\n" not in message
        and str(path) in message
        and "truncated" in message
        and "make data" in message
    )


def test_bad_header_and_corrupt_content_are_errors(data_root, tmp_path):
    raw = _copy_raw(data_root, tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte"
    blob = bytearray(labels.read_bytes())
    blob[3] = 0x99  # magic number
    labels.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="bad IDX header"):
        load_tensors(tmp_path)
    blob[3] = 0x01
    blob[500] ^= 0xFF  # one label flipped: size and header fine
    labels.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt"):
        load_tensors(tmp_path)


@pytest.mark.parametrize("where", ["debian", "beside"])
def test_gz_files_are_decompressed_from_debian_or_beside_them(
    where, data_root, tmp_path, monkeypatch
):
    root = tmp_path / "root"
    gz = tmp_path / "debian" if where == "debian" else raw_dir(root)
    gz.mkdir(parents=True)
    for spec in FILES:  # recompressed like Debian's (so torchvision's md5 would not match)
        with (
            (raw_dir(data_root) / spec.name).open("rb") as fin,
            gzip.open(gz / f"{spec.name}.gz", "wb", compresslevel=1) as fout,
        ):
            shutil.copyfileobj(fin, fout)
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "debian")
    ensure_data(root, download=False)  # no network: the .gz the error message invites suffice
    assert all((raw_dir(root) / spec.name).stat().st_size == spec.size for spec in FILES)


def test_a_damaged_gz_beside_them_is_passed_over_for_debians(data_root, tmp_path, monkeypatch):
    root, debian = tmp_path / "root", tmp_path / "debian"
    for folder in (raw_dir(root), debian):
        folder.mkdir(parents=True)
        for spec in FILES:
            with (
                (raw_dir(data_root) / spec.name).open("rb") as fin,
                gzip.open(folder / f"{spec.name}.gz", "wb", compresslevel=1) as fout,
            ):
                shutil.copyfileobj(fin, fout)
    damaged = raw_dir(root) / "train-images-idx3-ubyte.gz"  # an interrupted download's
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    monkeypatch.setattr(sources, "DEBIAN_DIR", debian)
    said = []
    ensure_data(root, download=False, say=said.append)
    assert any("is damaged: not used" in line for line in said), said
    assert all((raw_dir(root) / spec.name).stat().st_size == spec.size for spec in FILES)
    assert not list(raw_dir(root).glob("*.part"))


def test_a_damaged_gz_and_no_other_source_is_named_in_the_error(data_root, tmp_path, monkeypatch):
    root = tmp_path / "root"
    raw_dir(root).mkdir(parents=True)
    for spec in FILES:
        (raw_dir(root) / f"{spec.name}.gz").write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is damaged \(delete it\)"):
        ensure_data(root, download=False)
    assert not list(raw_dir(root).glob("*.part"))


def test_missing_everywhere_names_every_way(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError) as info:
        ensure_data(tmp_path / "root", download=False)
    message = str(info.value)
    for way in ("fmnist-data", "apt-get install", "torchvision", "data.root", "FMNIST_DATA"):
        assert way in message


def test_training_never_installs_system_packages_but_fmnist_data_may(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(sources, "_from_torchvision", lambda root, say: "offline")
    calls = []
    monkeypatch.setattr(sources, "_from_apt", lambda say: calls.append("apt") or "refused here")
    with pytest.raises(DataError) as info:
        ensure_data(tmp_path / "root")  # what training calls
    assert calls == [] and "not tried by training: run fmnist-data" in str(info.value)
    with pytest.raises(DataError):
        ensure_data(tmp_path / "root", system_packages=True)  # what fmnist-data calls
    assert calls == ["apt"]


def test_two_processes_preparing_at_once_do_not_corrupt(tmp_path):
    code = (
        "import sys; from fmnist.data.tensors import load_tensors; "
        "t = load_tensors(sys.argv[1]); print(len(t['train_labels']))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["60000", "60000"]
    for spec in FILES:
        sources.check_file(raw_dir(tmp_path) / spec.name, spec, tmp_path)
    assert not list(raw_dir(tmp_path).glob("*.part"))


def test_memory_loader_matches_totensor_dataloader(data_root):
    tensors = load_tensors(data_root)
    mem = MemoryLoader(tensors["test_images"], tensors["test_labels"], batch_size=1000)
    tv = TorchvisionLoader(str(data_root), train=False, indices=None, batch_size=1000)
    for (xm, ym), (xt, yt) in zip(mem.epoch(0), tv.epoch(0), strict=True):
        assert torch.equal(xm, xt) and torch.equal(ym, yt)  # identical to ToTensor: pixels / 255
    ref = transforms.ToTensor()(datasets.FashionMNIST(str(data_root), train=False)[0][0])
    assert torch.equal(next(mem.epoch(0))[0][0], ref)


def test_shuffled_epochs_are_seeded_permutations_with_partial_last_batch(data_root):
    tensors = load_tensors(data_root)
    images, labels = tensors["test_images"][:250], tensors["test_labels"][:250]
    loader = MemoryLoader(images, labels, batch_size=100, shuffle=True, seed=3)
    tv = TorchvisionLoader(
        str(data_root), train=False, indices=torch.arange(250), batch_size=100, shuffle=True, seed=3
    )
    e1 = [x for x, _ in loader.epoch(1)]
    assert [len(x) for x in e1] == [100, 100, 50]

    def key(xs):
        return sorted(map(bytes, (torch.cat(xs) * 255).round().to(torch.uint8).flatten(1).numpy()))  # noqa: E731

    assert key(e1) == key([x for x, _ in tv.epoch(1)])  # same multiset as the DataLoader path
    assert key(e1) == key([images.unsqueeze(1).float() / 255])
    assert torch.equal(torch.cat(e1), torch.cat([x for x, _ in loader.epoch(1)]))  # seeded
    assert not torch.equal(
        torch.cat(e1), torch.cat([x for x, _ in loader.epoch(2)])
    )  # new each epoch


def test_validation_split_is_stratified_disjoint_seeded_and_independent_of_seed(data_root):
    labels = load_tensors(data_root)["train_labels"]
    train, val = split_indices(labels, 5000, split_seed=0)
    assert len(train) == 55000 and len(val) == 5000
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(set(train.tolist()) | set(val.tolist())) == list(range(60000))
    assert torch.bincount(labels[val], minlength=10).tolist() == [500] * 10  # stratified
    assert torch.equal(val, split_indices(labels, 5000, split_seed=0)[1])
    assert not torch.equal(val, split_indices(labels, 5000, split_seed=1)[1])
    # the run's `seed` never moves the split: the loaders of two seeds hold the same images
    from omegaconf import OmegaConf

    from fmnist.config import DataConfig
    from fmnist.data import build_data

    cfg = OmegaConf.structured(DataConfig(root=str(data_root)))
    a, b = (build_data(cfg, 100, True, seed, torch.device("cpu"), False) for seed in (0, 7))
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.train.num_samples == 55000 and a.val.num_samples == 5000


def test_prepare_command_reports_ready(data_root):
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.data.prepare", "--root", str(data_root)],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert done.returncode == 0 and "60,000 train and 10,000 test images" in done.stdout
