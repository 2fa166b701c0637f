"""Faults, races and hostile files, tried on purpose with real processes and real files.

Each case asserts the exit code, a one-line message naming the file or key, and the state of the
files afterwards. What README's "When things go wrong" promises is tested here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import DATA, ROOT, run_train
from tests.conftest import run_module as cli
from tests.test_resume import start, wait_for_epoch

pytestmark = pytest.mark.slow
QUICK = ["limit_test_batches=2", "callbacks.progress.bar=false"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 (the lock file aside: it holds no run data)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".owner.lock"
    }


def one_line_error(done: subprocess.CompletedProcess, needle: str, code: int = 2) -> None:
    err = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], err[-2000:])
    assert needle in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err


def at_once(
    commands: dict[str, list], cwd: Path | None = None
) -> dict[str, subprocess.CompletedProcess]:
    """`python ARGS` for each command, all started together: a run refused before it trains costs
    its start-up (imports) alone, which two cores do two at a time."""
    env = {**os.environ, "FMNIST_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}
    procs = {
        key: subprocess.Popen(
            [sys.executable, *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, args in commands.items()
    }
    done = {}
    try:
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():  # none left behind by a timeout
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    run_dir = cwd / "run"
    run_train(["epochs=1", "limit_train_batches=3", *QUICK, f"hydra.run.dir={run_dir}"], cwd=cwd)
    return run_dir


def test_refusing_a_different_run_writes_nothing(finished, tmp_path):
    before = snapshot(finished)
    assert ".hydra/config.yaml" in before and "train.log" in before
    done = run_train(
        ["lr=0.5", "epochs=1", "limit_train_batches=3", *QUICK, f"hydra.run.dir={finished}"],
        cwd=tmp_path,
        check=False,
    )
    one_line_error(done, "already holds a different run (lr: 0.01 -> 0.5)")
    assert snapshot(finished) == before  # .hydra/ and train.log included: byte for byte


def test_a_changed_identity_value_is_refused_naming_it_and_writes_nothing(finished, tmp_path):
    """What a run trains or selects under (the schema's `identity` fact): training it further
    under another value would resume a checkpoint selected under the old one. All changed in one
    run: the refusal names every key that differs, so each key must be named on its own."""
    changed = ["monitor=val_loss", "ema.every=3", "eval_every=2"]
    before = snapshot(finished)
    args = [*changed, "epochs=2", "limit_train_batches=3", *QUICK, f"hydra.run.dir={finished}"]
    done = run_train(args, cwd=tmp_path, check=False)
    one_line_error(done, "already holds a different run (")
    diff = done.stderr.split("already holds a different run (", 1)[1].split("); ", 1)[0]
    named = {item.split(": ", 1)[0] for item in diff.split(", ")}
    assert {c.split("=")[0] for c in changed} <= named, diff
    assert snapshot(finished) == before


def test_a_run_recorded_before_a_key_was_added_resumes_with_its_null(finished, tmp_path):
    """A status.json written before `budget_min` and `weight_decay_epochs` existed: null is what
    that package did, so the run resumes; another value is refused naming the key. It resumes
    under another runtime.threads too: runtime.* and device may differ on resume (a requeued job
    may land on another node); one resume checks both."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    for key in ("budget_min", "weight_decay_epochs"):
        assert status["identity"].pop(key, "absent") is None
    (run_dir / "status.json").write_text(json.dumps(status))
    args = ["epochs=2", "limit_train_batches=3", *QUICK, f"hydra.run.dir={run_dir}"]
    before = snapshot(run_dir)
    done = run_train(["weight_decay_epochs=3", *args], cwd=tmp_path, check=False)
    one_line_error(done, "different run (weight_decay_epochs: (unset) -> 3)")
    assert snapshot(run_dir) == before
    done = run_train(["runtime.threads=1", *args], cwd=tmp_path)
    assert "resuming" in done.stdout + done.stderr
    assert json.loads((run_dir / "status.json").read_text())["last_epoch"] == 2
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]  # a completed run (no schedule) trained on


def test_a_second_process_is_refused_at_once_with_the_owners_pid(tmp_path):
    run_dir = tmp_path / "run"
    args = ["epochs=20", "limit_train_batches=100", *QUICK, f"hydra.run.dir={run_dir}"]
    owner = start(args, cwd=tmp_path)
    try:
        wait_for_epoch(run_dir, 1, owner)
        before = {k: v for k, v in snapshot(run_dir).items() if k == ".hydra/config.yaml"}
        started = time.time()
        done = run_train(args, cwd=tmp_path, check=False)
        one_line_error(done, f"is in use by process {owner.pid}")
        assert time.time() - started < 60
        assert {k: v for k, v in snapshot(run_dir).items() if k == ".hydra/config.yaml"} == before
    finally:
        owner.kill()
        owner.wait()
    # the owner died: its claim is free, and a rerun resumes
    done = run_train(
        [*args[:0], "epochs=2", "limit_train_batches=100", *QUICK, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout + done.stderr


def test_two_runs_started_at_once_into_one_directory(tmp_path):
    run_dir = tmp_path / "run"
    procs = [
        start(
            [
                f"seed={s}",
                "epochs=2",
                "limit_train_batches=100",
                *QUICK,
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        for s in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)]
    assert "is in use by process" in loser or "already holds a different run" in loser
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    winner_seed = json.loads((run_dir / "status.json").read_text())["hparams"]["seed"]
    assert all(r["seed"] == winner_seed for r in json.loads((run_dir / "results.json").read_text()))


def test_a_sweep_over_a_key_left_out_of_directory_names_is_refused_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_train(
        ["-m", "runtime.threads=1,2", "epochs=1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        check=False,
    )
    one_line_error(done, "cannot sweep runtime.threads")
    assert not sweep.exists()


def test_a_config_naming_foreign_code_is_refused(finished, tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile"
    shutil.copytree(finished, hostile)
    ckpt = torch.load(hostile / "checkpoints" / "best.pt", weights_only=True)
    ckpt["model_config"] = {"target": "os.system", "kwargs": {"command": f"touch {marker}"}}
    torch.save(ckpt, hostile / "checkpoints" / "best.pt")
    refused = at_once(
        {
            module: ["-m", f"fmnist.commands.{module}", hostile, *extra]
            for module, extra in (
                ("evaluate", []),
                ("predict", [ROOT / "docs/examples/bag.png"]),
                ("export", []),
            )
        }
    )
    for done in refused.values():
        one_line_error(done, "is not one of this package's models")
    overrides = hostile / ".hydra" / "overrides.yaml"
    overrides.write_text(f"- model._target_=os.system\n- +model.command=touch {marker}\n")
    done = run_train([f"resume={hostile}"], cwd=tmp_path, check=False)
    one_line_error(done, "is not one of this package's models")
    assert not marker.exists()


DAMAGED = ["epochs=3", "limit_train_batches=20", "callbacks.tensorboard=null", *QUICK]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run that finished 2 of its 3 epochs and says `interrupted`: resuming reads last.pt."""
    cwd = tmp_path_factory.mktemp("interrupted")
    run_dir = cwd / "run"
    run_train([*DAMAGED[1:], "epochs=2", f"hydra.run.dir={run_dir}"], cwd=cwd)
    status = json.loads((run_dir / "status.json").read_text()) | {"status": "interrupted"}
    (run_dir / "status.json").write_text(json.dumps(status))
    return run_dir


@pytest.mark.parametrize(
    "damages",  # last.pt's, then best.pt's: with both damaged, the run starts over
    [("truncated",), ("garbage", "empty"), ("pickle",)],
    ids=["truncated", "garbage-then-empty", "pickle"],
)
def test_a_damaged_last_checkpoint_falls_back_and_the_run_goes_on(interrupted, tmp_path, damages):
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    args = [*DAMAGED, f"hydra.run.dir={run_dir}"]
    damaged = [run_dir / "checkpoints" / f"{w}.pt" for w in ("last", "best")[: len(damages)]]
    for path, damage in zip(damaged, damages, strict=True):
        data = path.read_bytes()
        path.write_bytes(
            {
                "truncated": data[: len(data) // 2],
                "garbage": os.urandom(5000),
                "empty": b"",
                "pickle": b"\x80\x04cos\nsystem\n.",
            }[damage]
        )
    done = run_train(args, cwd=tmp_path, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for path in damaged:
        assert f"{path} is damaged or not a checkpoint" in out, path
    assert "Traceback" not in out
    assert "weights_only=False" not in out  # torch's unsafe hint is not passed on
    assert ("starting the run over" in out) == (len(damaged) == 2)
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_a_run_that_failed_before_training_is_rerun_after_the_fix(tmp_path):
    run_dir = tmp_path / "run"
    bad_root = tmp_path / "no-data"
    args = ["epochs=1", "limit_train_batches=3", *QUICK, f"hydra.run.dir={run_dir}"]
    no_source = {"FMNIST_DEBIAN_DIR": str(tmp_path / "no-debian-package")}  # nowhere to get it
    failed = run_train(
        [*args, f"data.root={bad_root}", "data.download=false"],
        cwd=tmp_path,
        check=False,
        env=no_source,
    )
    assert failed.returncode == 2 and "Fashion-MNIST not found" in failed.stderr
    # the rerun after the fix is the sweep's below (the same plan as a single run's): one job's
    # directory holds the bare status of a run that failed before training, the other the one
    # the sweep's report wrote
    sweep = tmp_path / "sweep"
    sargs = [
        "-m",
        "lr=0.01,0.001",
        "epochs=1",
        "limit_train_batches=2",
        "data.download=false",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
    ]
    broken = run_train(
        sargs, cwd=tmp_path, check=False, env={**no_source, "FMNIST_DATA": str(bad_root)}
    )
    assert broken.returncode != 0 and "2 of 2 jobs did not complete" in broken.stderr
    min(sweep.rglob("status.json")).write_text(  # one job: no run name, no epoch, no message
        json.dumps({"status": "failed", "error": {"type": "DataError"}})
    )
    run_train(sargs, cwd=tmp_path)  # the data is back: the same two jobs train
    statuses = [json.loads(p.read_text())["status"] for p in sorted(sweep.rglob("status.json"))]
    assert statuses == ["completed"] * 2


def test_data_damaged_in_place_is_caught_and_a_bad_cache_rebuilt(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DATA / "FashionMNIST" / "raw", root / "FashionMNIST" / "raw")
    raw = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    stat = raw.stat()
    with raw.open("r+b") as handle:  # flip bytes in place, keep size and mtime
        handle.seek(1_000_000)
        handle.write(bytes(b ^ 0xFF for b in handle.read(16)))
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    one_line_error(
        cli("data.prepare", "--root", root, "--no-download"), f"{raw} is corrupt", code=1
    )
    done = run_train(
        [
            "experiment=article",
            "epochs=1",
            "limit_train_batches=2",
            f"data.root={root}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        check=False,
    )
    one_line_error(done, f"{raw} is corrupt")
    shutil.copy(DATA / "FashionMNIST" / "raw" / raw.name, raw)  # restored
    cache = root / "FashionMNIST" / "fmnist-uint8.pt"
    cache.write_bytes(os.urandom(4096))
    from fmnist.data.tensors import load_tensors

    tensors = load_tensors(root)
    assert tensors["train_images"].shape == (60000, 28, 28) and cache.stat().st_size > 50_000_000
    blob = torch.load(cache, weights_only=True)
    blob["train_images"][0, 0, 0] ^= 1  # a cache whose content no longer matches its checksum
    torch.save(blob, cache)
    assert torch.equal(load_tensors(root)["train_images"], tensors["train_images"])


def test_images_of_any_mode_and_a_decompression_bomb(finished, tmp_path):
    from fmnist.data.tensors import load_tensors

    image = load_tensors(DATA)["test_images"][0].numpy()
    (tmp_path / "eight.png").write_bytes(b"")
    Image.fromarray(image).save(tmp_path / "eight.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 16-bit gray
    Image.fromarray(image).convert("P").save(tmp_path / "palette.png")
    Image.new("L", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 megapixels, compresses tiny
    images = [tmp_path / n for n in ("eight.png", "sixteen.png", "palette.png", "bomb.png")]
    done = cli("predict", finished, *images, "--json")
    assert done.returncode == 1  # one image refused, the others answered
    answers = {Path(a["image"]).name: a for a in json.loads(done.stdout)}
    top = answers["eight.png"]["top"]
    for name in ("sixteen.png", "palette.png"):
        assert answers[name]["top"][0]["class"] == top[0]["class"]
        assert abs(answers[name]["top"][0]["probability"] - top[0]["probability"]) < 0.01
    assert "too large" in answers["bomb.png"]["error"] and "Traceback" not in done.stderr
    from fmnist.commands.predict import load_image

    assert np.array_equal(load_image(tmp_path / "eight.png"), load_image(tmp_path / "sixteen.png"))


def test_compare_lists_unreadable_runs_and_compares_the_rest(finished, tmp_path):
    root = tmp_path / "runs"
    for name in ("good", "bad_results", "bad_status"):
        shutil.copytree(finished, root / name)
    (root / "bad_results" / "results.json").write_text(json.dumps({"epoch": "x"}))
    (root / "bad_status" / "status.json").write_text("[1, 2")
    done = cli("compare", root)
    assert done.returncode == 0, done.stderr
    assert "unreadable" in done.stdout and "good" in done.stdout
    one_line_error(cli("compare", root, "--top", "0"), "--top 0")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["runtime.threads=1000"], "runtime.threads=1000 is invalid"),
        (["device=mps"], "device=mps is invalid"),
        (["monitor=test_accuracy"], "monitor=test_accuracy is invalid"),
        (["runtime.bf16=maybe"], "runtime.bf16=maybe is invalid"),
    ],
)
def test_absurd_values_are_one_line(tmp_path, args, needle):
    done = run_train(
        [*args, "epochs=1", "limit_train_batches=1", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        check=False,
    )
    one_line_error(done, needle)


def test_a_yaml_syntax_error_is_one_line(tmp_path):
    extra = tmp_path / "conf" / "experiment"
    extra.mkdir(parents=True)
    (extra / "broken.yaml").write_text("# @package _global_\nlr: [0.1\nepochs: 2\n")
    done = run_train(
        ["--config-dir", str(tmp_path / "conf"), "experiment=broken"], cwd=tmp_path, check=False
    )
    one_line_error(done, "broken.yaml line 3, column 7: YAML syntax error")


def test_files_follow_the_umask(finished):
    for name in (
        "status.json",
        "results.json",
        "checkpoints/last.pt",
        "provenance.json",
        ".hydra/config.yaml",
    ):
        mode = (finished / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~0o022, (name, oct(mode))  # pytest runs under the default umask 022


@pytest.fixture
def tiny_disk(tmp_path):
    """A 600 KB tmpfs: room for a run's small files, not for its first checkpoint (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)]).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def test_a_full_disk_is_one_line_and_the_directory_stays_consistent(tiny_disk, tmp_path):
    run_dir = tiny_disk / "run"
    done = run_train(
        ["epochs=2", "limit_train_batches=3", *QUICK, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        check=False,
    )
    one_line_error(done, "No space left on device", code=1)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "No space left" in status["error"]["message"]
    for name in ("results.json", "status.json"):
        if (run_dir / name).exists():
            json.loads((run_dir / name).read_text())  # atomic writes: whole files or none
    assert not list(run_dir.rglob("*.tmp"))  # no half-written temporary left behind
    filler = tiny_disk / "filler"  # now a disk that is full before the run starts
    with filler.open("wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * 2_000_000)
    again = run_train(
        ["epochs=1", "limit_train_batches=2", *QUICK, f"hydra.run.dir={tiny_disk / 'run2'}"],
        cwd=tmp_path,
        check=False,
    )
    one_line_error(again, "No space left on device", code=1)


def wait_for_first_epochs(sweep: Path, jobs: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:  # `jobs` jobs past their first epoch
        done = [json.loads(p.read_text()).get("last_epoch", 0) for p in sweep.rglob("status.json")]
        if len(done) >= jobs and sorted(done)[-jobs] >= 1:
            return
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    raise TimeoutError(f"{jobs} jobs of {sweep} did not finish an epoch")


SWEEP_STOPS = [  # launcher, signal, sent to: the parent alone, or the group (Ctrl-C in a terminal)
    ("joblib", signal.SIGTERM, "parent"),
    ("joblib", signal.SIGINT, "group"),
    ("submitit_local", signal.SIGINT, "parent"),
]


@pytest.mark.parametrize(("launcher", "sig", "target"), SWEEP_STOPS)
def test_stopping_a_sweeps_parent_stops_every_worker_and_resumes(tmp_path, launcher, sig, target):
    sweep = tmp_path / "sweep"
    lrs = "0.01,0.001" if launcher == "submitit_local" else "0.01,0.001,0.0001"  # 3 jobs, 2 workers
    args = [
        "-m",
        f"hydra/launcher={launcher}",
        *(["hydra.launcher.cpus_per_task=1"] if launcher == "submitit_local" else []),
        f"lr={lrs}",
        "epochs=3",
        "limit_train_batches=100",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start(args, cwd=tmp_path, new_group=True)
    wait_for_first_epochs(sweep, 2, proc)
    from fmnist.run.locking import children, pid_alive

    workers = children(proc.pid)
    assert workers, f"{launcher} started no worker processes"
    os.kill(proc.pid if target == "parent" else -proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and "Traceback" not in out, out[-3000:]
    time.sleep(2)
    assert [pid for pid in workers if pid_alive(pid)] == []  # no orphaned workers left training
    states = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("status.json")}
    assert {s["status"] for s in states.values()} == {"interrupted"}, states  # saved, not killed
    assert "=== sweep summary" in out and f"{len(lrs.split(','))} of " in out
    if len(states) < len(lrs.split(",")):
        assert "job(s) not started" in out  # the third job was queued, never started
    if (launcher, sig) != ("joblib", signal.SIGTERM):
        return  # resuming does not depend on the launcher or the signal: checked once, below
    stopped = [name for name, state in states.items() if state.get("last_epoch", 0) >= 1]
    run_train(args, cwd=tmp_path)  # the rerun resumes and completes every job
    states = [json.loads(p.read_text())["status"] for p in sorted(sweep.rglob("status.json"))]
    assert states == ["completed"] * len(lrs.split(",")) and len(stopped) >= 2
    for name in stopped:  # from their checkpoints, not from scratch
        assert "resuming" in (sweep / name / "train.log").read_text(), name
    # that a job stopped so in a loky worker resumes to the values of one never stopped:
    # tests/test_pool.py (the pool's workers are loky's too) and tests/test_resume.py


def test_a_terminals_ctrl_c_and_its_forwarded_copy_are_one_request():
    """A worker gets Ctrl-C from the terminal and SIGTERM from the sweep's parent: it stops at a
    batch (exit through RunInterrupted), while the same signal twice still quits at once."""
    code = (
        "import os, signal, sys\n"
        "from fmnist.engine.signals import StopOnSignal, RunInterrupted\n"
        "with StopOnSignal() as stop:\n"
        "    for sig in sys.argv[1:]:\n"
        "        os.kill(os.getpid(), int(sig))\n"
        "    try:\n"
        "        stop.check()\n"
        "    except RunInterrupted as exc:\n"
        "        sys.exit(exc.signum)\n"
    )

    def outcome(*sigs: int) -> int:
        return subprocess.run([sys.executable, "-c", code, *map(str, sigs)]).returncode

    assert outcome(signal.SIGINT, signal.SIGTERM) == signal.SIGINT  # one request: stop at a batch
    assert outcome(signal.SIGTERM, signal.SIGINT) == signal.SIGTERM
    assert outcome(signal.SIGINT, signal.SIGINT) == 128 + signal.SIGINT  # twice: quit at once
    assert outcome(signal.SIGINT, signal.SIGTERM, signal.SIGINT) == 128 + signal.SIGINT
    after = (  # stopped, then another Ctrl-C while the process winds down: it quits, no traceback
        "import os, signal, time\n"
        "from fmnist.engine.signals import StopOnSignal\n"
        "with StopOnSignal():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.1)\n"
        "time.sleep(0.1)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", after], capture_output=True, text=True)
    assert done.returncode == 128 + signal.SIGINT and "Traceback" not in done.stderr, done.stderr


@contextlib.contextmanager
def read_only_mount(where: Path, fill: Path | None = None):
    """A tmpfs at `where` (holding a copy of `fill`), remounted read-only; root only."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        if fill is not None:
            shutil.copytree(fill, where / fill.name, ignore=shutil.ignore_patterns("*.tfevents*"))
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)])


def test_a_read_only_output_directory_is_one_line(tmp_path):
    with read_only_mount(tmp_path / "ro") as ro:
        for run_dir in (ro, ro / "new" / "run"):  # an existing directory, and one to create
            done = run_train(
                ["epochs=1", "limit_train_batches=2", f"hydra.run.dir={run_dir}"],
                cwd=tmp_path,
                check=False,
            )
            assert done.returncode in (1, 2)
            one_line_error(done, "ead-only file system", code=done.returncode)


def test_evaluating_a_read_only_run_prints_the_result_then_one_line(finished, tmp_path):
    with read_only_mount(tmp_path / "ro", fill=finished) as ro:
        run_dir = ro / finished.name
        before = snapshot(run_dir)
        done = cli("evaluate", run_dir)
        assert "on test: accuracy" in done.stdout, done.stdout  # the result is not lost
        one_line_error(done, "--out DIR", code=1)
        assert "Read-only file system" in done.stderr and "evaluation.json" in done.stderr
        assert snapshot(run_dir) == before
        elsewhere = tmp_path / "eval"
        done = cli("evaluate", run_dir, "--out", elsewhere)
        assert done.returncode == 0, done.stderr
        assert json.loads((elsewhere / "evaluation.json").read_text())["split"] == "test"


def test_outputs_that_vanish_mid_run_are_written_again(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(
        ["epochs=3", "limit_train_batches=150", *QUICK, f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    wait_for_epoch(run_dir, 1, proc)
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "results.json").unlink()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert [r["epoch"] for r in json.loads((run_dir / "results.json").read_text())] == [1, 2, 3]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3


def test_sigterm_to_a_basic_sweep_stops_it_reports_every_job_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "lr=0.01,0.001,0.0001",
        "epochs=2",
        "limit_train_batches=100",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start(args, cwd=tmp_path)
    wait_for_epoch(sweep / "epochs=2,lr=0.01", 1, proc)
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in out, out[-3000:]
    assert "3 of 3 jobs did not complete" in out and "2 job(s) not started" in out
    status = json.loads((sweep / "epochs=2,lr=0.01" / "status.json").read_text())
    assert status["status"] == "interrupted"
    run_train(args, cwd=tmp_path)
    assert [json.loads(p.read_text())["status"] for p in sorted(sweep.rglob("status.json"))] == [
        "completed"
    ] * 3


@pytest.mark.parametrize(
    "status",
    [
        {"status": "completed", "hparams": [1, 2]},
        {"status": "running", "hparams": {"lr": 0.01}, "last_epoch": "x"},
    ],
)
def test_a_status_file_of_the_wrong_shape_is_one_line_and_left_alone(tmp_path, status):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps(status))
    before = snapshot(run_dir)
    done = run_train(
        ["epochs=1", "limit_train_batches=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False
    )
    one_line_error(done, "is not a status file this package wrote")
    assert snapshot(run_dir) == before


def test_a_reader_that_leaves_early_costs_no_traceback_and_no_file(finished, tmp_path):
    """`fmnist-evaluate RUN | head`: the pipe closes before the report is printed."""
    out = tmp_path / "eval"
    for module, args in (("evaluate", [finished, "--out", out]), ("compare", [finished.parent])):
        command = " ".join([sys.executable, "-m", f"fmnist.commands.{module}", *map(str, args)])
        done = subprocess.run(
            ["bash", "-c", f"{command} | true; exit ${{PIPESTATUS[0]}}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, (module, done.stderr)
    assert json.loads((out / "evaluation.json").read_text())["split"] == "test"
