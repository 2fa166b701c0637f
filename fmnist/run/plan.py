"""What to do with a run directory, decided from its files alone: train fresh, resume from a
checkpoint, or nothing (completed). A directory that holds another run is refused."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fmnist.run.checkpoint import CHECKPOINTS, checkpoint_path, load_checkpoint
from fmnist.run.directory import RunDirError
from fmnist.run.provenance import PROVENANCE, PROVENANCE_DIFF
from fmnist.run.status import STATUS, finished, read_status

log = logging.getLogger(__name__)

RESULTS = ("results.csv", "results.json", "confusion_matrix.csv")


@dataclass(frozen=True)
class Plan:
    """fresh: train from scratch (`stale` outputs to clear first); resume: from `checkpoint`;
    complete: nothing to do, `status` holds the recorded result."""

    action: Literal["fresh", "resume", "complete"]
    checkpoint: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    stale: bool = False


ADDED_KEYS = ("budget_min", "weight_decay_epochs")  # identity keys older status files lack


def plan_run(run_dir: Path, identity: dict[str, Any], epochs: int) -> Plan:
    """Decide from the files alone; never writes. `identity`: what makes the run this run
    (`fmnist.hparams.identity`); a directory whose run differs in any of it is refused."""
    status = read_status(run_dir)
    if status is None:
        if any((run_dir / name).exists() for name in (*RESULTS, CHECKPOINTS)):
            raise RunDirError(
                f"{run_dir} holds results of an unknown run; choose another directory"
            )
        return Plan("fresh")
    recorded, last = status.get("identity"), status.get("last_epoch", 0)
    shapes = (recorded, status.get("hparams"))
    if any(s and not isinstance(s, dict) for s in shapes) or not isinstance(last, int | None):
        raise RunDirError(
            f"{run_dir / STATUS} is not a status file this package wrote (unexpected shape); "
            "move it away or choose another directory"
        )
    if not recorded and status.get("hparams"):
        raise RunDirError(
            f"{run_dir} holds a run recorded by an older fmnist (no identity in {STATUS}); "
            "use another directory"
        )
    if not recorded:  # failed before training started: nothing to keep
        return Plan("fresh", stale=True)
    # keys the schema gained after runs were recorded: null here is what the older package did
    recorded = {**{k: None for k in ADDED_KEYS if identity.get(k, 0) is None}, **recorded}
    if recorded != identity:
        diff = ", ".join(differences(recorded, identity))
        raise RunDirError(
            f"{run_dir} already holds a different run ({diff}); "
            "rerun with the recorded values or use another directory"
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


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each value that differs; a group file's value that changed exactly
    as a top-level one did (`optimizer.lr: ${lr}`) is not named again."""
    seen, out = set(), []
    for key in sorted(set(old) | set(new), key=lambda k: (k.count("."), k)):
        change = (repr(old.get(key, "(unset)")), repr(new.get(key, "(unset)")))
        if old.get(key, "(unset)") == new.get(key, "(unset)"):
            continue
        if change in seen and key.split(".")[0] in ("model", "optimizer", "scheduler"):
            continue  # a group file's `${lr}` follows the top-level value
        seen.add(change)
        out.append(f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}")
    return sorted(out)


def clear_outputs(run_dir: Path) -> None:
    """Remove what an earlier failed attempt left (results, checkpoints, TensorBoard events)."""
    for name in (*RESULTS, CHECKPOINTS, PROVENANCE, PROVENANCE_DIFF):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()
