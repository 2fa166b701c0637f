from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from fmnist.engine.graphs import optimizer_options, want_graphs
from fmnist.errors import ConfigError
from fmnist.validation import validate
from tests.conftest import CONF, compose_cfg, run_train


def test_default_config_has_the_articles_hyperparameters():
    cfg = compose_cfg()
    assert (cfg.lr, cfg.batch_size, cfg.shuffle, cfg.epochs, cfg.device) == (
        0.01,
        100,
        True,
        5,
        "auto",
    )
    assert cfg.model._target_.endswith("SeedCNN")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.01
    assert set(cfg.callbacks) == {"tensorboard", "results", "checkpoint", "progress"}
    validate(cfg)


@pytest.mark.parametrize("group", ["model", "optimizer", "scheduler", "callbacks", "experiment"])
def test_every_option_of_every_group_composes(group):
    options = sorted((CONF / group).glob("*.yaml"))
    assert options, f"conf/{group}/ is empty"
    for path in options:
        cfg = compose_cfg([f"{group}={path.stem}"])
        validate(cfg)


def test_optimizer_follows_top_level_lr():
    assert compose_cfg(["lr=0.001", "optimizer=sgd"]).optimizer.lr == 0.001


@pytest.mark.parametrize(
    "override",
    ["lr=abc", "batch_size=abc", "shuffle=maybe", "epochs=1.5", "data.loader=fast", "lrr=0.1"],
)
def test_wrong_types_and_unknown_keys_fail_at_composition(override):
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_cfg([override])
    assert override.split("=")[0] in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lr=0", "lr"),
        ("lr=-1", "lr"),
        ("batch_size=0", "batch_size"),
        ("epochs=0", "epochs"),
        ("device=tpu", "device"),
        ("data.val_size=60000", "data.val_size"),
        ("limit_train_batches=0", "limit_train_batches"),
        ("seed=-1", "seed"),
        (f"seed={2**32}", "seed"),  # numpy's generators take 32-bit seeds only
        ("data.split_seed=-1", "data.split_seed"),
        ("runtime.nan_check_interval=-1", "runtime.nan_check_interval"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose_cfg([override]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.num_classes=3"], "model.num_classes=3 is invalid: Fashion-MNIST has 10 classes"),
        (
            ["model=bn_cnn", "model.width=0"],
            "model.width=0, model.dropout=0.25, model.num_classes=10 cannot take 28x28 images",
        ),
        (
            ["model=resnet", "model.width=0"],
            "model.width=0, model.blocks=2, model.num_classes=10 cannot",
        ),
        (["model=bn_cnn", "model.dropout=2"], "dropout probability has to be between 0 and 1"),
    ],
)
def test_model_arguments_that_contradict_the_data_are_one_line(overrides, message):
    from fmnist.models import ModelError, build_model, check_fits_the_data, model_spec

    spec = model_spec(compose_cfg(overrides).model)
    with pytest.raises(ModelError) as info:
        check_fits_the_data(build_model(spec), spec, 10)
    assert "\n" not in str(info.value) and message in str(info.value), info.value


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer (sgd): Invalid momentum value: -1"),
        (["scheduler=onecycle", "scheduler.pct_start=2"], "scheduler (onecycle): Expected float"),
        (["scheduler=cosine", "scheduler.warmup_steps=-1"], "scheduler.warmup_steps=-1 is invalid"),
        (
            ["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=0"],
            "callbacks.early_stopping.patience=0 is invalid",
        ),
    ],
)
def test_values_that_torch_or_a_callback_refuse_are_one_line(
    data_root, tmp_path, overrides, message
):
    from fmnist.engine.build import build_run
    from fmnist.hparams import flat_hparams

    cfg = compose_cfg(overrides, data_root, output_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        build_run(cfg, tmp_path, flat_hparams(cfg))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_contradicting_model_argument_is_refused_before_training(tmp_path):
    done = run_train(
        ["model.num_classes=3", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: model.num_classes=3 is invalid")
    assert not (tmp_path / "r" / "results.csv").exists()


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["model=nope"])
    assert "seed_cnn" in str(info.value)


def test_article_sweep_yaml_is_the_articles_grid():
    cfg = compose_cfg(["+sweep=article"])
    from hydra.core.hydra_config import HydraConfig  # noqa: F401

    text = (CONF / "sweep" / "article.yaml").read_text()
    assert (
        "lr: 0.01,0.001" in text
        and "batch_size: 100,1000" in text
        and "shuffle: true,false" in text
    )
    assert cfg.lr == 0.01  # composes as a normal config; the sweeper expands the grid


def test_data_root_from_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path))
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose(config_name="train").data.root == str(tmp_path)


CUDA = torch.device("cuda")  # a device object only: deciding needs no GPU


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], True),  # the article's setup: Adam, constant lr
        (["optimizer=sgd"], True),
        (["runtime.cuda_graphs=false"], False),
        (["scheduler=onecycle"], False),  # a float lr would be baked into the graph
        (["runtime.compile=true"], False),
        (["optimizer._target_=torch.optim.Adagrad"], False),  # keeps its step count on the CPU
    ],
)
def test_cuda_graphs_are_on_only_where_safe(overrides, expected):
    assert want_graphs(compose_cfg(overrides), CUDA) is expected
    assert want_graphs(compose_cfg(overrides), torch.device("cpu")) is False


def test_asking_for_cuda_graphs_where_unsafe_names_every_reason():
    cfg = compose_cfg(["experiment=best", "runtime.cuda_graphs=true"])
    with pytest.raises(ConfigError) as info:
        want_graphs(cfg, torch.device("cpu"))
    message = str(info.value)
    assert "a CUDA device" in message and "a constant learning rate" in message
    assert optimizer_options(compose_cfg(["runtime.cuda_graphs=true"]), True) == {
        "capturable": True
    }
    assert optimizer_options(compose_cfg(["optimizer=sgd"]), True) == {}  # SGD has no such flag
