"""The package beyond its own checkout and beyond Linux: an installed wheel used from an empty
folder, a run where `fcntl` and `/proc` are missing, the portable lock, and the module layer (no
import cycle, no module-level state for signals, sweeps or locks)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fmnist.run import locking
from tests.conftest import DATA, ROOT

PACKAGE = ROOT / "fmnist"
TINY = ["epochs=1", "limit_train_batches=3", "limit_test_batches=1", "callbacks.progress.bar=false"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{cmd} exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    return done


def test_every_module_imports_alone():
    """A cycle shows as an ImportError when the module that closes it is imported first."""
    code = (
        "import importlib, pkgutil, sys, fmnist\n"
        "names = [m.name for m in pkgutil.walk_packages(fmnist.__path__, 'fmnist.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names:\n"
        "    for k in [k for k in sys.modules if k == 'fmnist' or k.startswith('fmnist.')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = _run([sys.executable, "-c", code], cwd=ROOT)
    assert int(done.stdout.strip()) >= 40


def test_no_global_statement_and_no_module_state_for_signals_sweeps_or_locks():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], path
    stateful = (
        "engine/signals.py",
        "engine/fit.py",
        "engine/runner.py",
        "sweeps/report.py",
        "sweeps/fused/group.py",
        "sweeps/fused/launch.py",
        "run/locking.py",
        "run/directory.py",
        "run/status.py",
        "run/plan.py",
        "main.py",
    )
    for name in stateful:
        for node in ast.parse((PACKAGE / name).read_text()).body:
            value = getattr(node, "value", None)
            if isinstance(node, ast.Assign | ast.AnnAssign) and value is not None:
                mutable = isinstance(value, ast.Dict | ast.List | ast.Set) or (
                    isinstance(value, ast.Constant) and value.value is None
                )
                assert not mutable, f"{name}:{node.lineno}: {ast.unparse(node)}"


@pytest.fixture
def no_os_lock(monkeypatch):
    """The lock as it works where neither fcntl nor msvcrt exists."""
    monkeypatch.setattr(locking, "fcntl", None)
    monkeypatch.setattr(locking, "msvcrt", None)


def test_the_fallback_lock_refuses_a_second_holder_and_frees_a_dead_ones(tmp_path, no_os_lock):
    path = tmp_path / ".owner.lock"
    first, second = locking.FileLock(path), locking.FileLock(path)
    first.acquire()
    assert locking.holder(path) == os.getpid()
    with pytest.raises(locking.LockHeld) as info:
        second.acquire(wait_s=0.1)
    assert info.value.owner.startswith(f"{os.getpid()} ")
    first.release()
    assert locking.holder(path) is None
    second.acquire()
    second.release()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    path.write_text(f"{int(dead.stdout)} elsewhere\n")  # a holder that died without releasing
    path.with_name(path.name + ".held").touch()
    assert locking.holder(path) is None
    third = locking.FileLock(path)
    third.acquire(wait_s=0.1)
    assert locking.holder(path) == os.getpid()
    third.release()


def test_the_os_lock_is_dropped_with_its_process_and_probing_it_takes_no_claim(tmp_path):
    path = tmp_path / ".owner.lock"
    code = "import sys, time; from fmnist.run.locking import FileLock; FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        assert locking.holder(path) == proc.pid
        with pytest.raises(locking.LockHeld):
            locking.FileLock(path).acquire(wait_s=0.1)
    finally:
        proc.kill()
        proc.wait()
    assert locking.holder(path) is None  # the OS dropped it: the claim is free
    mine = locking.FileLock(path)
    mine.acquire(wait_s=0.1)
    assert locking.holder(path) == os.getpid()
    mine.release()


WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as where it does not exist
import fmnist, fmnist.run.locking
assert fmnist.run.locking.fcntl is None
sys.argv = ["train.py", *sys.argv[1:]]
from fmnist.main import main
main()
"""


def test_import_and_a_short_run_without_fcntl_or_proc(tmp_path):
    """`/proc` is hidden under an empty tmpfs in a private mount namespace (root only)."""
    script = tmp_path / "run.py"
    script.write_text(WITHOUT_FCNTL)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(script), *TINY, f"hydra.run.dir={run_dir}"]
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("hiding /proc needs root and unshare (util-linux)")
    hidden = 'mount -t tmpfs none /proc && test -z "$(ls /proc)" && exec "$@"'
    env = {**os.environ, "FMNIST_DATA": str(DATA)}
    done = _run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", hidden, "sh", *cmd],
        cwd=tmp_path,
        env=env,
    )
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["last_epoch"] == 1, done.stderr
    assert not (run_dir / ".owner.lock.held").exists()  # the fallback lock was let go


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, built from this checkout, installed into a new virtual environment outside it.
    Its dependencies (torch is 5 GB) come from this environment's site-packages through a .pth
    file; the editable fmnist there is not on that path (its finder is a .pth of its own, which
    Python reads only in a site directory), so `import fmnist` finds the wheel's copy alone."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy: building in the checkout would leave build/ there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("fmnist", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            base / "dist",
            source,
        ],
        cwd=base,
        timeout=600,
    )
    wheel = next((base / "dist").glob("fmnist-*.whl"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=base
        ).stdout.strip()
    )
    (site / "_fmnist_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=base,
        timeout=600,
    )
    return venv


@pytest.mark.slow
def test_the_wheel_runs_from_an_empty_folder_without_the_checkout(installed, tmp_path):
    bin_dir = installed / "bin"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FMNIST_DATA")}
    env |= {
        "FMNIST_DATA": str(DATA),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    where = _run(
        [
            bin_dir / "python",
            "-c",
            "import fmnist.paths as p; print(p.PACKAGE); print(p.conf_dir()); print(p.checkout())",
        ],
        cwd=work,
        env=env,
    ).stdout.split()
    assert all(line.startswith(str(installed)) for line in where[:2]) and where[2] == "None"
    no_env = {k: v for k, v in env.items() if k != "FMNIST_DATA"}
    cache = _run(
        [bin_dir / "python", "-c", "from fmnist.paths import data_root; print(data_root())"],
        cwd=work,
        env=no_env,
    )
    assert cache.stdout.strip() == str(tmp_path / "cache" / "fmnist")  # the per-user folder

    mine = work / "mine" / "experiment"  # a user's own preset, the package untouched
    mine.mkdir(parents=True)
    (mine / "tiny.yaml").write_text(
        "# @package _global_\nlr: 0.005\nepochs: 1\nlimit_train_batches: 3\n"
    )
    own = ["--config-dir", work / "mine", "experiment=tiny", *TINY[2:]]
    _run([bin_dir / "fmnist-train", *own], cwd=work, env=env)
    (single,) = (work / "outputs" / "runs").glob("*/*")  # the default place, under the cwd
    status = json.loads((single / "status.json").read_text())
    assert status["status"] == "completed" and status["hparams"]["lr"] == 0.005
    assert (
        json.loads((single / "provenance.json").read_text())["git"]["commit"] is None
    )  # no checkout

    fused = plugins_run_from(bin_dir, work, env)  # a 2-job sweep through the package's plugin
    compared = _run([bin_dir / "fmnist-compare", fused, "--no-write"], cwd=work, env=env)
    assert "seed=0" in compared.stdout and "seed=1" in compared.stdout
    job = fused / "epochs=1,seed=0"
    evaluated = _run([bin_dir / "fmnist-evaluate", job], cwd=work, env=env)
    assert "accuracy" in evaluated.stdout
    image = work / "trousers.png"
    shutil.copy(
        ROOT / "docs" / "examples" / "trousers.png", image
    )  # the test's copy, not the product's
    predicted = _run([bin_dir / "fmnist-predict", job, image, "--json"], cwd=work, env=env)
    assert json.loads(predicted.stdout)[0]["top"][0]["class"]

    launcher = _run(
        [
            bin_dir / "fmnist-train",
            "hydra/launcher=slurm",
            "--cfg",
            "hydra",
            "-p",
            "hydra.launcher",
        ],
        cwd=work,
        env=env,
    )
    assert "FmnistSlurmLauncher" in launcher.stdout  # the Hydra plugin came with the wheel


def plugins_run_from(bin_dir: Path, work: Path, env: dict[str, str]) -> Path:
    """The package's own Hydra plugins, found from a folder outside the checkout: a 2-job fused
    sweep (its directory returned) and a 2-trial Optuna search through the console script."""
    fused = work / "fused"
    done = _run(
        [bin_dir / "fmnist-train", "-m", "hydra/launcher=fused", "hydra.launcher.probe=false"]
        + ["seed=0,1", *TINY, f"hydra.sweep.dir={fused}"],
        cwd=work,
        env=env,
    )
    assert "2 jobs, 2 of them in 1 fused group(s)" in done.stdout, done.stdout + done.stderr
    assert len(list(fused.glob("*/checkpoints/last.pt"))) == 2
    search = _run(
        [
            bin_dir / "fmnist-train",
            "hparams_search=optuna",  # the sweeper plugin and its YAML
            "hydra.sweeper.n_trials=2",
            "epochs=1",
            "limit_train_batches=2",
            "limit_test_batches=1",
            "data.val_size=1000",
            f"hydra.sweep.dir={work / 'search'}",
        ],
        cwd=work,
        env=env,
    )
    assert "Best value" in search.stdout and (work / "search" / "optuna.journal").is_file()
    trials = sorted(p.parent.name for p in (work / "search").glob("trial_*/status.json"))
    assert trials == ["trial_000", "trial_001"], trials
    return fused


@pytest.mark.slow
def test_the_editable_install_finds_its_plugins_from_an_empty_folder(tmp_path):
    """`make install`'s editable install (the environment running these tests), used from a
    folder outside the checkout: Hydra must find fused, slurm and the Optuna sweeper there."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "fmnist-train").exists():
        pytest.skip(f"no fmnist-train beside {sys.executable}: not the `make install` venv")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env |= {"FMNIST_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}
    plugins_run_from(bin_dir, work, env)


def test_a_job_refused_by_a_live_owner_leaves_the_owners_status_alone(tmp_path):
    """Two sweeps into one directory (say, a rerun while the cluster still runs the first): the
    refused job's failure must not overwrite the live run's `running` status."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from fmnist.run.directory import RunDirError
    from fmnist.run.status import read_status, write_status
    from fmnist.sweeps.report import SweepReport

    run_dir = tmp_path / "job"
    run_dir.mkdir()
    write_status(run_dir, status="running", last_epoch=1, pid=1)
    code = "import sys, time; from fmnist.run.locking import FileLock; FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir / ".owner.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}})
    refused = JobReturn(status=JobStatus.FAILED)
    refused._return_value = RunDirError(f"{run_dir} is in use by process {holder.pid}")
    try:
        assert holder.stdout.readline().strip() == "held"
        SweepReport().on_job_end(config, refused)
        assert read_status(run_dir)["status"] == "running"  # the owner's, untouched
    finally:
        holder.kill()
        holder.wait()
    SweepReport().on_job_end(config, refused)  # nobody holds it: a job that died before training
    assert read_status(run_dir)["status"] == "failed"
