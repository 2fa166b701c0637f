"""What the restructuring promises: train(cfg) from Python is the CLI's code path, each list of
keys has one source, and each private-API use is pinned by a test."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from fmnist.engine import train
from fmnist.sweep import shared_directory_keys
from tests.conftest import CONF, compose_cfg, run_train

ARGS = ["epochs=1", "limit_train_batches=3", "limit_test_batches=2", "callbacks.progress.bar=false"]


def files_of(run_dir):
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and "tfevents" not in p.name
    )


@pytest.mark.slow
def test_train_from_python_writes_what_the_cli_writes(data_root, tmp_path):
    cli_dir, py_dir = tmp_path / "cli", tmp_path / "python"
    run_train([*ARGS, "model=bn_cnn", "model.width=8", f"hydra.run.dir={cli_dir}"], cwd=tmp_path)
    cfg = compose_cfg([*ARGS, "model=bn_cnn", "model.width=8"], data_root, output_dir=py_dir)
    train(cfg)
    assert files_of(py_dir) == files_of(cli_dir)
    cli_hp = json.loads((cli_dir / "status.json").read_text())["hparams"]
    py_hp = json.loads((py_dir / "status.json").read_text())["hparams"]
    assert py_hp == cli_hp and py_hp["model"] == "bn_cnn"  # the chosen file, from both
    assert len(list(py_dir.glob("events.out.tfevents.*"))) == 1


def test_every_key_left_out_of_job_names_cannot_be_swept():
    """Hydra's exclude_keys (conf/hydra/default.yaml) is the one list; the sweep check reads it."""
    excluded = list(
        OmegaConf.load(CONF / "hydra" / "default.yaml").job.config.override_dirname.exclude_keys
    )
    assert {"device", "runtime.threads", "data.root", "limit_train_batches"} <= set(excluded)
    for key in excluded:
        cfg = OmegaConf.create(
            {
                "hydra": {
                    "overrides": {"task": [f"{key}=a,b", "lr=0.1,0.2"]},
                    "sweeper": {},
                    "job": {"config": {"override_dirname": {"exclude_keys": excluded}}},
                }
            }
        )
        assert shared_directory_keys(cfg) == [key]  # lr is in the job names: it may be swept


def test_the_objective_is_named_once():
    cfg = compose_cfg([])
    optuna = compose_cfg(["hparams_search=optuna"])
    assert cfg.monitor == "val_accuracy"
    assert optuna.hydra.sweeper.direction == "maximize"
    assert (
        compose_cfg(["hparams_search=optuna", "monitor=val_loss"]).hydra.sweeper.direction
        == "minimize"
    )


def test_tensorboard_private_file_writer_is_pinned(tmp_path):
    """`SummaryWriter._get_file_writer` is private; fmnist.callbacks.tensorboard.file_writer wraps
    it. If torch renames it or changes where it writes, this fails."""
    from torch.utils.tensorboard import SummaryWriter

    from fmnist.callbacks.tensorboard import file_writer

    writer = SummaryWriter(log_dir=str(tmp_path))
    fw = file_writer(writer)
    assert hasattr(fw, "add_summary") and fw.get_logdir() == str(tmp_path)
    writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_no_module_is_long_without_reason():
    from pathlib import Path

    import fmnist

    long = {
        str(p.relative_to(Path(fmnist.__file__).parent)): len(p.read_text().splitlines())
        for p in Path(fmnist.__file__).parent.rglob("*.py")
    }
    over = {k: v for k, v in long.items() if v > 260}
    assert set(over) <= {"rundir.py"}, over  # the run directory is one concern, kept together
