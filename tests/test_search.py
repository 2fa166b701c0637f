"""Hyperparameter search (hparams_search=optuna): the search space, the study on disk, pruning,
resume after kill -9, joblib, the dashboard; real searches in subprocesses, real training."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from fmnist.sweeps.search import (
    JOURNAL,
    SearchError,
    make_pruner,
    make_sampler,
    open_storage,
    override,
    search_space,
)
from tests.conftest import DATA, ROOT, run_train
from tests.test_tensorboard_server import free_port

optuna.logging.set_verbosity(optuna.logging.WARNING)
SHORT = ["limit_train_batches=30", "limit_test_batches=2", "data.val_size=1000"]
# RandomSampler seed 5 draws lr 1e-05, 0.003, 1e9, 0.003, 1e-05, 1e9 for trials 0-5 (Optuna's
# own RNG, whatever the CPU): trial 4 (a hopeless lr) meets the median of 3 finished trials, two
# of them good, at epoch 2 and is pruned; the lr=1e9 trials diverge and fail.
SIX = [
    "hparams_search=optuna",
    "hydra.sweeper.n_trials=6",
    "hydra.sweeper.params.lr='choice(0.003, 0.00001, 1e9)'",
    "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
    "hydra.sweeper.sampler.seed=5",
    "epochs=3",
    "callbacks=[results,checkpoint]",
    *SHORT,
]


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="fmnist", storage=open_storage(str(sweep / JOURNAL)))


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


# --- the search space and settings, without training ------------------------------------------


def test_the_search_space_reads_hydras_sweep_syntax():
    space = search_space(
        {"lr": "tag(log, interval(0.0001, 0.1))", "batch_size": "choice(64, 128)"},
        [
            "optimizer=adam,adamw",
            "model.width=range(8, 33, 8)",
            "ema.decay=range(0.9, 1.0, 0.05)",
            "epochs=3",
            "seed=tag(int, interval(0, 9))",
        ],
    )
    d = space.distributions
    assert d["lr"] == FloatDistribution(0.0001, 0.1, log=True)
    assert d["batch_size"] == CategoricalDistribution([64, 128])
    assert d["optimizer"] == CategoricalDistribution(["adam", "adamw"])
    assert d["model.width"] == IntDistribution(8, 32, step=8)  # range's stop is excluded
    assert d["ema.decay"] == FloatDistribution(0.9, 0.95, step=0.05)
    assert d["seed"] == IntDistribution(0, 9)
    assert space.fixed == ["epochs=3"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"lr": "interval(0.1, 0.01)"}, "low end must be below the high end"),
        ({"lr": "tag(log, interval(0, 1))"}, "on a log scale must be above 0"),
        ({"lr": "range(5, 1)"}, "is empty"),
        ({"lr": "tag(cubic, interval(1, 2))"}, "unknown tag cubic"),
        ({"lr": "choice(0.1"}, "search space:"),
        ({}, "search space is empty"),
    ],
)
def test_a_bad_search_space_is_refused_in_one_line(params, says):
    with pytest.raises(SearchError, match=re.escape(says)) as refused:
        search_space(params, [])
    assert "\n" not in str(refused.value)


def test_sampled_values_become_overrides_that_parse_back():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in (0.00012345678901234, 1e-05, 64, True, "adamw", None):
        assert parser.parse_override(override("k", value)).value() == value


def test_pruners_by_name_or_target_and_a_seeded_sampler_moves_on_when_resumed():
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    pruner = make_pruner({"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0})
    assert isinstance(pruner, optuna.pruners.PercentilePruner)
    with pytest.raises(SearchError, match="medain is unknown"):
        make_pruner("medain")
    with pytest.raises(SearchError, match="not an Optuna pruner"):
        make_pruner({"_target_": "collections.OrderedDict"})
    spec = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    space = {"x": FloatDistribution(0, 1)}

    def first(sampler):
        study = optuna.create_study(sampler=sampler)
        return study.ask(space).params["x"]

    assert first(make_sampler(spec)) == first(make_sampler(spec))  # seeded: reproducible
    assert first(make_sampler(spec, asked=3)) != first(make_sampler(spec))  # ...not repeated


# --- real searches ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def six_trials(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("search")
    sweep = cwd / "sweep"
    done = run_train([*SIX, f"hydra.sweep.dir={sweep}"], cwd=cwd)
    return sweep, done


@pytest.mark.slow
def test_a_median_pruned_search_keeps_every_trial_with_its_state(six_trials):
    sweep, done = six_trials
    trials = {t.number: t for t in study_of(sweep).trials}
    states = [trials[n].state for n in range(6)]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] + [
        TrialState.PRUNED,
        TrialState.FAIL,
    ], states
    # the pruned trial stopped at an epoch boundary before its last epoch, and kept its run
    pruned = sweep / "trial_004"
    assert status(pruned)["status"] == "pruned" and status(pruned)["last_epoch"] == 2
    assert "pruned at epoch 2 by MedianPruner" in status(pruned)["stopped_early"]
    assert len(json.loads((pruned / "results.json").read_text())) == 2
    assert (pruned / "checkpoints" / "last.pt").exists()
    assert trials[4].intermediate_values.keys() == {1, 2}  # reported after every epoch
    assert trials[2].user_attrs["error"].startswith("loss became nan")  # why it failed
    # the summary ranks by the objective, the pruned trial after every finished one
    table = pd.read_csv(sweep / "summary.csv")
    ranked = table[table["status"] == "completed"]["val_accuracy"].tolist()
    assert ranked == sorted(ranked, reverse=True)
    assert (
        table[table["status"] == "pruned"].index.min()
        > table[table["status"] == "completed"].index.max()
    )
    assert "trial_004: pruned at epoch 2" in done.stdout
    # optimization_results.yaml: the best completed trial, as the study says
    results = (sweep / "optimization_results.yaml").read_text()
    best = study_of(sweep).best_trial
    assert f"best_value: {best.value}" in results and best.state == TrialState.COMPLETE
    assert "complete: 3" in results and "pruned: 1" in results and "fail: 2" in results
    assert f"Best value: {best.value:.4f} (trial {best.number}" in done.stdout


@pytest.mark.slow
def test_a_finished_search_rerun_trains_nothing_and_the_cli_reads_its_study(six_trials, tmp_path):
    sweep, _ = six_trials
    before = {d.name: status(d)["ended"] for d in sweep.glob("trial_*")}
    again = run_train([*SIX, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert "Launching" not in again.stdout + again.stderr  # the study holds its 6 trials
    assert {d.name: status(d)["ended"] for d in sweep.glob("trial_*")} == before
    assert len(study_of(sweep).trials) == 6
    cli = subprocess.run(
        [Path(sys.executable).with_name("optuna"), "trials", "--storage", sweep / JOURNAL,
         "--storage-class", "JournalFileBackend", "--study-name", "fmnist", "-f", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert sorted(t["state"] for t in json.loads(cli.stdout)) == sorted(
        ["COMPLETE"] * 3 + ["PRUNED"] + ["FAIL"] * 2
    )


@pytest.mark.slow
def test_optuna_dashboard_opens_the_study_file(six_trials):
    sweep, _ = six_trials
    port = free_port()
    server = subprocess.Popen(
        [Path(sys.executable).with_name("optuna-dashboard"), sweep / JOURNAL,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/0?after=0") as r:
                    study = json.load(r)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "dashboard did not start"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(10)
    assert study["name"] == "fmnist"
    assert sorted(t["state"] for t in study["trials"]) == sorted(
        ["Complete"] * 3 + ["Pruned"] + ["Fail"] * 2
    )


@pytest.mark.slow
def test_kill9_of_the_search_then_the_same_command_ends_with_n_trials(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",  # 0-1 done, 2 cut, 3 proposed after the resume
        "hydra.sweeper.pruner=none",
        "epochs=3",
        "limit_train_batches=60",
        "limit_test_batches=2",
        "data.val_size=1000",
        "callbacks=[results,checkpoint]",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "FMNIST_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cut = sweep / "trial_002"
    deadline = time.time() + 240
    while not (cut / "checkpoints" / "last.pt").exists():  # trial 2 is one epoch in
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the study says trial 2 is running
    proc.wait(30)
    states = {t.number: t.state for t in study_of(sweep).trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.RUNNING}
    ended = {n: status(sweep / f"trial_00{n}")["ended"] for n in (0, 1)}
    done = run_train(args, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert "2 trials finished, 1 cut short" in out
    assert f"resuming {cut} after epoch" in out  # from its checkpoint, not from scratch
    trials = study_of(sweep).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {n: status(sweep / f"trial_00{n}")["ended"] for n in (0, 1)} == ended  # not retrained
    assert [r["epoch"] for r in json.loads((cut / "results.json").read_text())] == [1, 2, 3]
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 4  # the resumed sampler does not propose trials 0-2 again


@pytest.mark.slow
def test_a_search_under_joblib_trains_two_trials_at_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["hparams_search=optuna", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]
    args += ["hydra.sweeper.n_trials=2", "epochs=2", "callbacks=[results]", *SHORT]
    args += ["limit_train_batches=150"]  # each trial longer than the workers' start-up skew
    run_train([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert all(t.state == TrialState.COMPLETE for t in study_of(sweep).trials)
    logs = [(sweep / f"trial_00{n}" / "train.log").read_text() for n in (0, 1)]
    assert all(" 1 threads" in log for log in logs)  # 2 cores, 2 trials: one thread each
    # each trial from the log's first line (the run's claim) to its status.json's last write
    starts = [
        datetime.strptime(
            re.match(r"\[([\d\- :,]+)\]", log).group(1), "%Y-%m-%d %H:%M:%S,%f"
        ).timestamp()
        for log in logs
    ]
    ends = [(sweep / f"trial_00{n}" / "status.json").stat().st_mtime for n in (0, 1)]
    assert max(starts) < min(ends), f"the two trials did not overlap: {starts} {ends}"
    pids = {status(sweep / f"trial_00{n}")["pid"] for n in (0, 1)}
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.slow
def test_a_bad_search_space_or_a_second_search_in_the_same_directory_gets_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    bad = run_train(
        ["hparams_search=optuna", "hydra.sweeper.params.lr='interval(0.1, 0.01)'",
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "search space: lr: interval(0.1, 0.01): the low end must be below" in bad.stderr
    assert not sweep.exists()  # refused before anything was written
    unknown = run_train(
        ["hparams_search=optuna", "+hydra.sweeper.params.lrr='choice(1, 2)'",
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, check=False,
    )  # fmt: skip
    assert unknown.returncode != 0 and "Key 'lrr' not in" in unknown.stderr
    assert not sweep.exists()
    from fmnist.run.locking import FileLock

    sweep.mkdir()
    held = FileLock(sweep / ".search.lock")
    held.acquire()  # a live search of this process holds the directory
    try:
        second = run_train(
            ["hparams_search=optuna", *SHORT, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, check=False
        )
    finally:
        held.release()
    assert second.returncode != 0 and f"another search runs in {sweep}" in second.stderr


def test_a_job_opens_its_running_trial_from_the_file_and_not_a_finished_one(tmp_path):
    from fmnist.sweeps.search import load_trial, open_study

    url = str(tmp_path / JOURNAL)
    study = open_study(url, "s", "maximize", None, "none")
    done, running = study.ask(), study.ask()
    study.tell(done, 0.5)
    trial = load_trial(url, "s", running.number, "median")  # as another process does
    trial.report(0.25, step=1)
    assert study_of_url(url).trials[running.number].intermediate_values == {1: 0.25}
    assert isinstance(trial.study.pruner, optuna.pruners.MedianPruner)
    assert load_trial(url, "s", done.number, "median") is None  # ended: a rerun trains alone
    with pytest.raises(SearchError, match="created to maximize, not to minimize"):
        open_study(url, "s", "minimize")


def test_budgeted_trials_report_at_tenths_of_their_schedules(tmp_path):
    """Trials whose budget chose 13 and 5 epochs report at the same steps (percent of their
    schedule done, the first evaluation in each tenth), so the median pruner compares them at
    the same point of their schedules; a run sized in epochs reports its epochs. A budgeted
    trial is never pruned at its first evaluation (the pruners' warm-up counts steps)."""
    from fmnist.sweeps.search import open_study
    from fmnist.sweeps.search.report import TrialReport

    url = str(tmp_path / JOURNAL)
    study = open_study(url, "s", "maximize", None, "none")

    def reported(epochs: int, budget: dict | None, pruner: object = "none") -> tuple[dict, int]:
        trial = study.ask()
        report = TrialReport(url, "s", trial.number, json.dumps(pruner))
        state = SimpleNamespace(
            cfg=OmegaConf.create({"epochs": epochs}), budget=budget, monitor="val_accuracy",
            history=[], epoch=0, log=logging.getLogger("test"), should_stop=None,
        )  # fmt: skip
        report.on_run_start(state)
        for epoch in range(1, epochs + 1):
            state.epoch, row = epoch, {"epoch": epoch, "val_accuracy": epoch / epochs}
            state.history.append(row)
            report.on_epoch_end(state, row)
            if state.should_stop:
                break
        return study_of_url(url).trials[trial.number].intermediate_values, state.epoch

    long, _ = reported(13, {"epochs": 13})
    assert sorted(long) == list(range(0, 101, 10)) and long[30] == 4 / 13 and long[100] == 1.0
    assert sorted(reported(5, {"epochs": 5})[0]) == [20, 40, 60, 80, 100]
    assert sorted(reported(3, None)[0]) == [1, 2, 3]
    always = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0}  # prunes any accuracy
    assert reported(5, {"epochs": 5}, always)[1] == 2  # not at step 20, its first evaluation
    assert reported(5, None, always)[1] == 1  # a run in epochs: as the pruner says


def study_of_url(url: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=open_storage(url))


@pytest.mark.slow
def test_any_optuna_storage_url_may_hold_the_study(tmp_path):
    sweep, db = tmp_path / "sweep", tmp_path / "elsewhere" / "study.db"
    db.parent.mkdir()
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{db}",
    ]
    run_train(
        [*args, "epochs=1", "callbacks=[results]", *SHORT, f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    study = optuna.load_study(study_name="fmnist", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert not (sweep / JOURNAL).exists() and (sweep / "trial_001" / "status.json").exists()
