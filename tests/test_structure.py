"""What the restructuring promises: train(cfg) from Python is the CLI's code path, each list of
keys has one source, and each private-API use is pinned by a test."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fmnist.config import resolve
from fmnist.engine.runner import train
from fmnist.hparams import flat_hparams, identity, job_dirname, named, shared
from fmnist.sweeps.report import shared_directory_keys
from tests.conftest import compose_cfg, run_train

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


@pytest.mark.parametrize(
    "key",
    ["device", "runtime.threads", "data.root", "limit_train_batches", "callbacks.progress.bar"]
    + ["resume", "sweep", "hparams_search", "+callbacks.trial.number"],
)
def test_every_key_left_out_of_job_names_cannot_be_swept(key):
    """The schema's `named` fact is the one source: job names leave the key out, and the sweep
    check refuses sweeping it (its jobs would share one directory)."""
    cfg = OmegaConf.create(
        {"hydra": {"overrides": {"task": [f"{key}=a,b", "lr=0.1,0.2"]}, "sweeper": {}}}
    )
    assert shared_directory_keys(cfg) == [key]  # lr is in the job names: it may be swept
    assert job_dirname([f"{key}=a", "lr=0.1", "seed=3"]) == "lr=0.1,seed=3"


def test_each_fact_about_a_key_is_declared_once_on_the_schema(tmp_path):
    overrides = ["model=bn_cnn", "ema.decay=0.9", "+callbacks.trial.number=3"]
    cfg = compose_cfg(overrides, output_dir=tmp_path)
    ident, common = identity(cfg), shared(cfg)
    for key in ("monitor", "ema.every", "ema.decay", "eval_every", "tta", "tta_translate"):
        assert key in ident, key  # they change what a run trains or selects
    assert {"model.width", "optimizer._target_", "batch_size", "data.val_size"} <= set(ident)
    assert "param_groups.norm.lr_scale" in ident and "data.augment.hflip" in ident
    machine = ("epochs", "device", "runtime.threads", "runtime.bf16", "output_dir", "data.root")
    assert not [k for k in ident if k.startswith(machine) or k.startswith("callbacks")]
    for key in ("seed", "lr", "monitor", "optimizer._target_", "ema.every", "output_dir"):
        assert key not in common, key  # each member of a fused group owns it
    for key in ("batch_size", "epochs", "eval_every", "model.width", "runtime.threads"):
        assert key in common, key  # the shared computation
    assert "data.augment.hflip" not in common and "data.val_size" in common
    assert not named("runtime.threads") and named("runtime.bf16") and named("seed")


@pytest.mark.parametrize("overrides", [[], ["experiment=fast"], ["scheduler=onecycle"]])
def test_the_identity_is_the_same_resolved_early_or_as_read(overrides, tmp_path):
    """The command line reads `${lr}` as it goes; a fused group and the Python API resolve their
    configs first: the same run must get the same identity (else a rerun is refused)."""
    cfg = compose_cfg(overrides, output_dir=tmp_path)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolve(task)  # as they resolve it
    assert identity(task) == identity(cfg) and flat_hparams(task) == flat_hparams(cfg)
    assert "optimizer.lr" not in flat_hparams(task)


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


PACKAGE = Path(__file__).resolve().parents[1] / "fmnist"


def test_no_module_is_over_300_lines():
    lengths = {
        str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert len(lengths) > 50
    assert {k: v for k, v in lengths.items() if v > 300} == {}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules a module imports, at its top or inside functions (lazy imports
    count), and the packages each import runs the __init__ of."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` blocks never run
        id(n)
        for b in ast.walk(tree)
        if isinstance(b, ast.If) and "TYPE_CHECKING" in ast.unparse(b.test)
        for n in ast.walk(b)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & modules
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_lazy_imports_included():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # a module's own packages are initialised before it: importing their other modules is no cycle
    graph = {
        name: {m for m in imports_of(path, modules) if m != name and not name.startswith(m + ".")}
        for name, path in paths.items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the check itself finds a cycle where there is one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
