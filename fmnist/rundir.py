"""The run directory on disk: its files, its status, who holds it, what to do with it, and loading.

Everything that reads or writes a run's own files goes through here (the engine, resume, compare,
the sweep report, evaluate, predict, export). A run directory made by someone else is untrusted
input: JSON of any shape reads as "unreadable", checkpoints load with `weights_only=True`, and
models are built only from this package's registry (`fmnist.models.build_model`).
"""

from __future__ import annotations

import logging
import shutil
import socket
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch

from fmnist.files import read_json, write_json, write_text
from fmnist.hparams import identity
from fmnist.locking import FileLock, LockHeld, holder, pid_alive

log = logging.getLogger(__name__)

STATUS = "status.json"
PROVENANCE = "provenance.json"
PROVENANCE_DIFF = "provenance.diff"
RESULTS = ("results.csv", "results.json", "confusion_matrix.csv")
CHECKPOINTS = "checkpoints"
LOCK = ".owner.lock"


class RunDirError(ValueError):
    """This directory cannot be used as asked; the message is one line and says what to do."""


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{which}.pt"


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# --- status.json ------------------------------------------------------------------------------


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status, or None when it is missing or not a JSON object (never raises)."""
    try:
        status = read_json(Path(run_dir) / STATUS)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def finished(status: dict[str, Any] | None, epochs: int) -> bool:
    """Whether a run with this status has nothing left to train for `epochs`: completed them
    (or stopped early), or pruned (a pruned trial stays as its search left it)."""
    if not status:
        return False
    done = int(status.get("last_epoch") or 0) >= epochs or status.get("stopped_early")
    return (status.get("status") == "completed" and bool(done)) or status.get("status") == "pruned"


def objective(run_dir: str | Path) -> float | None:
    """What a sweeper optimizes for this run: the monitored value of its selected epoch, as its
    status.json records it (also for a completed run that a rerun skips); None if unknown."""
    return (read_status(run_dir) or {}).get("objective")


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's status.json (atomically) and return it."""
    status = read_status(run_dir) or {}
    status.update(fields)
    write_json(Path(run_dir) / STATUS, status)
    return status


def liveness(status: dict[str, Any] | None) -> str:
    """running, completed, failed, interrupted; `crashed` for a dead process still 'running'."""
    return where_running(status)[0]


def where_running(status: dict[str, Any] | None) -> tuple[str, str]:
    """(state, how we know) of a run, read from any host. A 'running' run on this host is alive
    if its pid is; on another host, Slurm's view of its job decides where there is one (ended:
    `crashed`); without one it stays `running`, said to be unverifiable from here."""
    if status is None:
        return "unknown", ""
    state = str(status.get("status", "unknown"))
    if state != "running":
        return state, ""
    host, job = status.get("host"), status.get("slurm_job")
    if host == socket.gethostname():
        return ("running", "") if pid_alive(status.get("pid")) else ("crashed", "")
    where = f"running on {host}" + (f" (Slurm job {job})" if job else "")
    if not job:
        return "running", f"{where}; cannot be checked from here"
    from fmnist.slurm import slurm_states  # noqa: PLC0415  (only for runs on another host)

    slurm = slurm_states([str(job)]).get(str(job))
    if slurm is None:
        return "running", f"{where}; Slurm does not answer here"
    if slurm in ("RUNNING", "PENDING", "REQUEUED", "SUSPENDED", "CONFIGURING", "COMPLETING"):
        return "running", where
    return "crashed", f"Slurm job {job} ended ({slurm}) on {host} while the run was 'running'"


# --- ownership ----------------------------------------------------------------------------------


class RunDirectory:
    """One run directory as this process uses it: the lock it holds on it from `claim` to
    `release` (the OS drops it if the process dies), and the run's log file meanwhile."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FileLock(self.path / LOCK)
        self._log: logging.Handler | None = None

    def claim(self) -> RunDirectory:
        """Take the directory; a second process is refused at once with the owner's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise RunDirError(
                f"{self.path} is in use by process {held.owner}; "
                "wait for it or choose another directory"
            ) from None
        return self

    def open_log(self) -> None:
        """Append this run's log records to its train.log until `release`."""
        handler = logging.FileHandler(self.path / "train.log", mode="a")
        handler.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        )
        logging.getLogger().addHandler(handler)
        self._log = handler

    def plan(self, hparams: dict[str, Any], epochs: int) -> Plan:
        return plan_run(self.path, hparams, epochs)

    def release(self) -> None:
        if self._log is not None:
            logging.getLogger().removeHandler(self._log)
            self._log.close()
            self._log = None
        self._lock.release()

    def __enter__(self) -> RunDirectory:
        return self.claim()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def owner(run_dir: str | Path) -> int | None:
    """The pid holding the directory now, or None when nobody does (looking takes no claim)."""
    return holder(Path(run_dir) / LOCK)


# --- what to do with a directory ---------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """fresh: train from scratch (`stale` outputs to clear first); resume: from `checkpoint`;
    complete: nothing to do, `status` holds the recorded result."""

    action: Literal["fresh", "resume", "complete"]
    checkpoint: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    stale: bool = False


def plan_run(run_dir: Path, hparams: dict[str, Any], epochs: int) -> Plan:
    """Decide from the files alone; never writes. Refuses a directory that holds another run."""
    status = read_status(run_dir)
    if status is None:
        if any((run_dir / name).exists() for name in (*RESULTS, CHECKPOINTS)):
            raise RunDirError(
                f"{run_dir} holds results of an unknown run; choose another directory"
            )
        return Plan("fresh")
    recorded, last = status.get("hparams"), status.get("last_epoch", 0)
    if (recorded and not isinstance(recorded, dict)) or not isinstance(last, int | None):
        raise RunDirError(
            f"{run_dir / STATUS} is not a status file this package wrote (unexpected shape); "
            "move it away or choose another directory"
        )
    if not recorded:  # failed before training started: nothing to keep
        return Plan("fresh", stale=True)
    old, new = identity(recorded), identity(hparams)
    if old != new:
        diff = ", ".join(
            f"{k}: {old.get(k)} -> {new.get(k)}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        )
        raise RunDirError(
            f"output dir {run_dir} already holds a different run ({diff}); use another directory"
        )
    if finished(status, epochs):
        return Plan("complete", status=status)
    if status.get("status") == "failed":
        return Plan("fresh", stale=True)
    for which in ("last", "best"):  # best.pt is the fallback when last.pt was damaged
        path = checkpoint_path(run_dir, which)
        if not path.exists():
            continue
        try:
            return Plan("resume", checkpoint=load_checkpoint(path), status=status)
        except RunDirError as exc:
            log.warning("%s; trying an older checkpoint", exc)
    if checkpoint_path(run_dir, "last").exists():
        log.warning("no readable checkpoint in %s: starting the run over", run_dir / CHECKPOINTS)
    return Plan("fresh", stale=True)


def clear_outputs(run_dir: Path) -> None:
    """Remove what an earlier failed attempt left (results, checkpoints, TensorBoard events)."""
    for name in (*RESULTS, CHECKPOINTS, PROVENANCE, PROVENANCE_DIFF):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()


def write_hydra_files(run_dir: Path, cfg: Any) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them (what `resume=`
    reads), but only once this process owns the directory (Hydra's own saving is off)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    folder = run_dir / ".hydra"
    write_text(folder / "config.yaml", OmegaConf.to_yaml(task))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


def write_traceback(run_dir: Path) -> Path:
    """Append the current exception's traceback to the job's log file (not to the console).

    Hydra 1.3 leaves a failed job's own log empty, so the engine writes it here.
    """
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    path = Path(handlers[0].baseFilename) if handlers else run_dir / "train.log"
    with path.open("a") as handle:
        handle.write(traceback.format_exc())
    return path


def write_provenance(run_dir: Path, record: dict[str, Any], diff: str) -> dict[str, Any]:
    """provenance.json (and provenance.diff when the tree had uncommitted changes).

    A resumed run keeps what earlier attempts recorded under `earlier_attempts`.
    """
    try:
        earlier = read_json(run_dir / PROVENANCE)
    except (OSError, ValueError):
        earlier = None
    record = {**record, "started": now()}
    if isinstance(earlier, dict):
        previous = earlier.pop("earlier_attempts", [])
        record["earlier_attempts"] = [*(previous if isinstance(previous, list) else []), earlier]
    if diff:
        write_text(run_dir / PROVENANCE_DIFF, diff)
        record["git"] = {**record.get("git", {}), "diff_file": PROVENANCE_DIFF}
    write_json(run_dir / PROVENANCE, record)
    return record


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = read_json(run_dir / PROVENANCE)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# --- checkpoints and trained models -----------------------------------------------------------


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint as a dict; `weights_only=True`, so no code runs from the file."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # truncated, garbage, a pickle of code: all refused the same way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        if "Weights only load failed" in first:  # torch's hint to load unsafely is not for us
            first = (
                "it holds objects other than tensors; loading it could run code, so it is refused"
            )
        raise RunDirError(
            f"{path} is damaged or not a checkpoint ({type(exc).__name__}: {first}); "
            "delete it, or resume to retrain from the previous good one"
        ) from None
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise RunDirError(f"{path} is not an fmnist checkpoint (no model weights in it)")
    return blob


@dataclass
class Trained:
    """A model ready for inference and what its checkpoint says about it."""

    model: torch.nn.Module
    checkpoint: dict[str, Any]
    path: Path  # the checkpoint file
    label: str  # how to name it in output: the run directory, or the file


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory -> its checkpoints/<which>.pt; a .pt file stays itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory or checkpoint file")
    ckpt = checkpoint_path(path, which)
    if not ckpt.is_file():
        have = sorted(p.stem for p in ckpt.parent.glob("*.pt"))
        if read_status(path) is None and not (path / ".hydra").is_dir():
            raise RunDirError(f"{path} is not a run directory (no status.json, no checkpoints)")
        raise RunDirError(
            f"{path} has no {which} checkpoint ({ckpt}); available: {', '.join(have) or 'none'}"
        )
    return ckpt


def load_trained(path: str | Path, which: str = "best") -> Trained:
    """A run directory or a checkpoint file copied anywhere: the checkpoint describes its model."""
    from fmnist.models import ModelError, build_model

    ckpt_path = resolve_checkpoint(path, which)
    checkpoint = load_checkpoint(ckpt_path)
    spec = checkpoint.get("model_config")
    if not isinstance(spec, dict):
        raise RunDirError(
            f"{ckpt_path} does not say which model it holds (made by an older fmnist?)"
        )
    try:
        model = build_model(spec)
        model.load_state_dict(checkpoint["model"])
    except (ModelError, RuntimeError) as exc:
        raise RunDirError(f"{ckpt_path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    label = str(path) if Path(path).is_dir() else str(ckpt_path)
    return Trained(model, checkpoint, ckpt_path, label)
