"""`budget_min`: a run that times itself and chooses its epochs to fit the minutes given."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from fmnist.config import evaluated_once
from fmnist.engine.budget import choose, decide, recorded
from fmnist.errors import ConfigError
from fmnist.run.directory import RunDirError
from fmnist.validation import settle_models, validate
from tests.conftest import compose_cfg, run_train
from tests.test_resume import start, wait_for_epoch

QUICK = ["limit_train_batches=100", "limit_test_batches=3", "scheduler=onecycle"]
RECORD = {
    **{"minutes": 1.0, "epochs": 12, "eval_every": 12, "step_s": 0.004, "epoch_s": 0.43},
    **{"eval_s": 0.46, "timing_s": 2.1, "expected_s": 54.0},
}


def test_choose_fills_the_time_and_widens_evaluation_to_its_share():
    # 7 epochs of 1 s and 7 evaluations of 0.5 s fill 10.5 s exactly
    assert choose(1.0, 0.5, 10.5, 1, max_eval_s=100) == (7, 1)
    # evaluations may take 2 of 20 s: every 9th epoch (2 of them) leaves room for 18 epochs
    assert choose(1.0, 1.0, 20.0, 1, max_eval_s=2) == (18, 9)
    # "once, at the end": one evaluation whatever it costs
    assert choose(1.0, 5.0, 20.0, None, max_eval_s=2) == (15, 15)
    assert choose(10.0, 1.0, 5.0, 1, max_eval_s=1) is None  # not one epoch
    week = 0.9 * 7 * 24 * 3600  # a GPU's 0.4-s epochs for a week: bisected, not counted down
    epochs, every = choose(0.4, 1.0, week, 1, max_eval_s=0.1 * week / 0.9, row_s=4e-5)
    assert 0.4 * epochs + 4e-5 * epochs**2 / 2 + math.ceil(epochs / every) <= week
    assert (
        0.4 * (epochs + 1) + 4e-5 * (epochs + 1) ** 2 / 2 + math.ceil((epochs + 1) / every) > week
    )


def test_evaluated_once_means_eval_every_links_to_epochs_not_an_equal_number(tmp_path):
    from fmnist.api import compose
    from fmnist.sweeps.fused.launch import Job

    assert evaluated_once(compose_cfg(["experiment=fast"]))  # eval_every: ${epochs}
    assert evaluated_once(compose_cfg(["experiment=fast", "epochs=1"]))  # 1 == 1: the link tells
    assert not evaluated_once(compose_cfg(["budget_min=10", "eval_every=5"]))  # epochs are 5 too
    assert not evaluated_once(compose_cfg(["experiment=best_gpu", "epochs=5"]))  # its YAML's 5
    assert not evaluated_once(compose_cfg(["budget_min=10"]))  # eval_every 1
    # resolved configs keep the link: the API's and a fused sweep's jobs
    cfg = compose(["experiment=fast", f"hydra.run.dir={tmp_path / 'run'}"])
    assert evaluated_once(cfg) and cfg.eval_every == cfg.epochs == 14
    cfg.epochs = 30  # as a budget sets them
    assert cfg.eval_every == 30
    dirs = [f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=job0"]
    assert evaluated_once(Job(0, ["experiment=fast"], compose_cfg(["experiment=fast", *dirs])).task)
    given = ["experiment=best_gpu", "epochs=5"]
    assert not evaluated_once(Job(1, given, compose_cfg([*given, *dirs])).task)


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, 1e308, 7 * 24 * 60 + 1])
def test_budget_min_out_of_range_is_refused_naming_the_key(value):
    cfg = compose_cfg([f"budget_min={value}"])
    with pytest.raises(ConfigError, match="budget_min=.* is invalid: minutes of training"):
        validate(cfg)


@pytest.mark.parametrize(
    "record",
    [
        {"epochs": "12"},
        [1, 2],
        {**RECORD, "epochs": 0},
        {**RECORD, "epochs": True},  # a bool is an int to Python, not a count
        {**RECORD, "model": ["width=64"]},
        {**RECORD, "model": {"width": [64]}},
    ],
)
def test_a_budget_record_this_package_did_not_write_is_refused(tmp_path, record):
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "budget": record}))
    minutes = RECORD["minutes"]
    with pytest.raises(RunDirError, match="holds a budget record this package did not write"):
        recorded(tmp_path, minutes)
    (tmp_path / "status.json").write_text(json.dumps({"budget": RECORD}))
    assert recorded(tmp_path, minutes).epochs == 12
    assert recorded(tmp_path, 5.0) is None  # another budget: the identity check names it
    # a status.json rewritten without the record: provenance.json's copy keeps the choice
    (tmp_path / "status.json").write_text(json.dumps({"status": "running"}))
    assert recorded(tmp_path, minutes) is None
    (tmp_path / "provenance.json").write_text(json.dumps({"budget": RECORD}))
    assert recorded(tmp_path, minutes).epochs == 12


def test_budget_models_wrong_in_type_or_range_are_one_line(tmp_path):
    from hydra.errors import ConfigCompositionException

    from fmnist.engine.runner import check_config
    from fmnist.models import ModelError

    with pytest.raises(ConfigCompositionException) as refused:  # the schema's type
        compose_cfg(["budget_models=[{min_epochs:many,model:{width:64}}]"])
    assert "could not be converted to Integer" in str(refused.value.__cause__)
    base = ["model=bn_cnn", "budget_min=1"]
    for given, says in [
        ("[{min_epochs:0,model:{width:64}}]", r"budget_models\[0\].min_epochs=0 is invalid"),
        ("[{model:{width:64}},{model:{widht:64}}]", r"budget_models\[1\].model=.*not: widht\)"),
        ("[{model:{width:wide}}]", r"budget_models\[0\].model=.*their kind \(not: width\)"),
        ("[{model:{_target_:fmnist.models.resnet.ResNet}}]", r"\(not: _target_\)"),
        ("[{min_epochs:3}]", r"budget_models\[0\].model=\{\} is invalid.*none given"),
    ]:
        with pytest.raises(ConfigError, match=says):
            validate(compose_cfg([*base, f"budget_models={given}"]))
    with pytest.raises(ModelError, match="width"):  # built before any directory is touched
        check_config(compose_cfg([*base, "budget_models=[{model:{width:0}}]"]))
    # a run directory's record of a model that budget_models does not list: refused, not built
    cfg = compose_cfg([*base, "budget_models=[{model:{width:8}}]"])
    log = logging.getLogger("test")
    for model in (
        {"w": 1},
        {"width": "${oc.env:HOME}"},
        {"width": 9},
        {"width": 8.0},
        {"width": True},
    ):
        (tmp_path / "status.json").write_text(json.dumps({"budget": {**RECORD, "model": model}}))
        with pytest.raises(RunDirError, match="budget_models does not list"):
            decide(cfg, tmp_path, [], log)
    (tmp_path / "status.json").write_text(json.dumps({"budget": {**RECORD, "model": {"width": 8}}}))
    assert decide(cfg, tmp_path, [], log).model == {"width": 8}
    assert (cfg.model.width, cfg.epochs) == (8, 12)  # the recorded choice, applied
    # an entry's interpolation is recorded resolved, and its record is the entry again
    cfg = compose_cfg([*base, "budget_models=[{model:{width:${batch_size}}}]"])
    (tmp_path / "status.json").write_text(
        json.dumps({"budget": {**RECORD, "model": {"width": 100}}})
    )
    assert decide(cfg, tmp_path, [], log).model == {"width": 100} and cfg.model.width == 100
    # a model given on the command line is the model trained: a preset's list is not used, and
    # is not checked against the other model (before validate, as the command line does it)
    cfg = compose_cfg(["model=seed_cnn", "budget_min=1", "budget_models=[{model:{width:64}}]"])
    with pytest.raises(ConfigError, match="not a setting|not: width"):
        validate(cfg)
    settle_models(cfg, ["model=seed_cnn"], log)
    validate(cfg)
    assert cfg.budget_models is None
    with pytest.raises(RunDirError, match="a model given on the command line turns them off"):
        decide(cfg, tmp_path, ["model=seed_cnn"], log)
    # the recorded settings given on the command line: the same model, resumed
    given = ["model=bn_cnn", "budget_min=1", "budget_models=[{model:{width:8}}]", "model.width=100"]
    cfg = compose_cfg(given)
    assert decide(cfg, tmp_path, ["model.width=100"], log).model == {"width": 100}
    cfg = compose_cfg([*base, "budget_models=[{model:{width:8}}]", "model.width=16"])
    assert decide(cfg, tmp_path / "new", ["model.width=16"], log) is None
    assert cfg.budget_models is None and cfg.model.width == 16
    cfg = compose_cfg([*base, "budget_models=[{model:{width:8}}]", "model.dropout=0.1"])
    decide(cfg, tmp_path / "new", ["model.dropout=0.1"], log)  # not a setting the list changes
    assert len(cfg.budget_models) == 1


def test_the_fused_launcher_runs_budgeted_jobs_alone():
    from fmnist.sweeps.fused.launch import why_not_fused

    assert "budget_min" in why_not_fused(compose_cfg(["budget_min=1"]), 2)
    assert why_not_fused(compose_cfg([]), 2) is None  # the same jobs without a budget fuse


def test_a_presets_budget_with_epochs_given_lets_fused_jobs_group(tmp_path):
    """The fused launcher groups jobs by the epochs they will train, decided as each run decides."""
    from fmnist.sweeps.fused.launch import Job, why_not_fused

    given = ["experiment=best", "epochs=2"]
    dirs = [f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=job0"]
    job = Job(0, given, compose_cfg([*given, *dirs]))
    assert job.task.budget_min is None and job.task.epochs == 2
    assert "budget_min" not in (why_not_fused(job.task, 2) or "")
    alone = Job(1, ["experiment=best"], compose_cfg(["experiment=best", *dirs]))
    assert alone.task.budget_min == 30 and "budget_min" in why_not_fused(alone.task, 2)


def read(run_dir: Path, name: str) -> dict | list:
    return json.loads((run_dir / name).read_text())


@pytest.mark.slow
def test_a_budgeted_run_ends_within_its_budget_with_its_schedule_finished(tmp_path):
    run_dir = tmp_path / "run"
    decay = ["optimizer.weight_decay=1e-5", "weight_decay_epochs=4"]  # scaled to the chosen length
    run_train(["budget_min=0.25", *QUICK, *decay, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    status, rows = read(run_dir, "status.json"), read(run_dir, "results.json")
    chosen = status["budget"]
    assert status["status"] == "completed" and chosen["minutes"] == 0.25
    epochs = chosen["epochs"]
    assert epochs >= 2  # 100 batches of the default model take a second or two
    # filled: one more epoch (and its evaluation) would not have fit the 90 % aimed at
    assert chosen["expected_s"] + chosen["epoch_s"] + chosen["eval_s"] > 0.9 * 15 - 0.1, chosen
    assert status["epochs"] == epochs == read(run_dir, "provenance.json")["budget"]["epochs"]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert {r["epochs"] for r in rows} == {epochs} and {r["budget_min"] for r in rows} == {0.25}
    assert rows[-1]["lr_current"] < 1e-3 * rows[0]["lr"]  # one-cycle ended at its end, not cut
    spent = chosen["timing_s"] + rows[-1]["run_duration"]
    # aimed at 90 % of 15 s; a noisy machine may stray, so the margins are wide
    assert 0.5 * 15 < spent < 1.3 * 15, (spent, chosen)
    assert chosen["expected_s"] <= 0.9 * 15 + 0.1
    log = (run_dir / "train.log").read_text()
    assert log.count("budget_min=0.25 (15 s): ") == 1
    assert f"same run anywhere: epochs={epochs} eval_every={chosen['eval_every']}" in log
    assert f"weight decay x{4 / epochs:.3g}: set for 4 epochs, this run trains {epochs} " in log


@pytest.mark.slow
def test_kill9_then_the_same_command_resumes_with_the_epochs_chosen_first(tmp_path):
    run_dir = tmp_path / "run"
    args = ["budget_min=0.3", *QUICK, f"hydra.run.dir={run_dir}"]
    proc = start(args, cwd=tmp_path)
    wait_for_epoch(run_dir, 2, proc)
    proc.kill()
    proc.wait()
    first = read(run_dir, "status.json")
    assert first["status"] == "running" and first["last_epoch"] < first["budget"]["epochs"]
    done = run_train(args, cwd=tmp_path)
    assert f"resuming {run_dir}" in done.stdout + done.stderr
    status, rows = read(run_dir, "status.json"), read(run_dir, "results.json")
    assert status["status"] == "completed" and status["budget"] == first["budget"]
    assert [r["epoch"] for r in rows] == list(range(1, first["budget"]["epochs"] + 1))
    assert (run_dir / "train.log").read_text().count("budget_min=0.3 (18 s): ") == 1  # timed once
    # trained further, as any finished run: the same command with more epochs
    further = first["budget"]["epochs"] + 1
    done = run_train([*args, f"epochs={further}"], cwd=tmp_path)
    assert "resuming" in done.stdout + done.stderr
    status = read(run_dir, "status.json")
    assert status["status"] == "completed" and status["last_epoch"] == further
    assert read(run_dir, "results.json")[-1]["epoch"] == further


@pytest.mark.slow
def test_a_budget_trains_the_first_model_that_fits_and_a_resume_rebuilds_it(tmp_path):
    """budget_models: a model of which too few epochs fit is passed over (one line), the next is
    trained, recorded, and rebuilt by the same command after kill -9 (else its identity differs)."""
    run_dir = tmp_path / "run"
    small = "{width1:12,width2:16,width3:24}"
    models = f"[{{min_epochs:100000,model:{{width1:8}}}},{{min_epochs:1,model:{small}}}]"
    args = ["experiment=best", "budget_min=0.4", "limit_train_batches=30", "limit_test_batches=3"]
    args += ["data.val_size=500", "tta_translate=0", "model.bn_momentum=0.5"]  # keeps budget_models
    args += [f"budget_models={models}", f"hydra.run.dir={run_dir}"]
    proc = start(args, cwd=tmp_path)
    wait_for_epoch(run_dir, 2, proc)
    proc.kill()
    proc.wait()
    done = run_train(args, cwd=tmp_path)
    assert f"resuming {run_dir}" in done.stdout + done.stderr
    status, rows = read(run_dir, "status.json"), read(run_dir, "results.json")
    chosen = status["budget"]
    widths = {"width1": 12, "width2": 16, "width3": 24}
    assert status["status"] == "completed" and chosen["model"] == widths
    assert read(run_dir, "provenance.json")["budget"] == chosen
    assert {r["model.width1"] for r in rows} == {12} and len(rows) == chosen["epochs"]
    log = (run_dir / "train.log").read_text()
    passed = "budget_models[0] (model.width1=8) is not trained here: "
    assert log.count(passed) == 1 and "fewer than its min_epochs=100000" in log  # timed once
    named = "model.width1=12 model.width2=16 model.width3=24"
    assert log.count(f"budget_min=0.4 (24 s): budget_models[1] ({named}), ") == 1
    again = f"epochs={chosen['epochs']} eval_every={chosen['eval_every']} {named}"
    assert f"The same run anywhere: {again}" in log
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    kwargs = ckpt["model_config"]["kwargs"]
    assert kwargs["width1"] == 12 and kwargs["bn_momentum"] == 0.5
    assert any(v.shape[0] == 24 for v in ckpt["model"].values() if v.ndim == 4)


@pytest.mark.slow
def test_where_no_budget_model_fits_the_model_as_set_is_trained(tmp_path, caplog):
    from fmnist.engine.budget import size_to_budget

    models = "[{min_epochs:100000,model:{width:4}},{min_epochs:100000,model:{width:6}}]"
    cfg = compose_cfg(
        ["budget_min=1", "model=bn_cnn", "model.width=8", "limit_train_batches=5"]
        + ["limit_test_batches=2", "data.val_size=500", f"budget_models={models}"],
        output_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO):
        budget = size_to_budget(cfg, tmp_path, logging.getLogger("fmnist.test"))
    assert budget.model is None and cfg.model.width == 8 and cfg.epochs == budget.epochs >= 1
    assert budget.overrides() == f"epochs={budget.epochs} eval_every={budget.eval_every}"
    assert caplog.text.count("is not trained here") == 2
    assert (
        "budget_min=1 (60 s): " in caplog.text
        and "budget_models[" not in caplog.text.split("budget_min=1 (60 s): ")[1]
    )
