"""The time-to-accuracy recipe (air_cnn and its options): patch whitening, multi-crop TTA,
per-group learning rates, the triangular schedule, alternating flip, evaluation every N epochs."""

import json

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from fmnist.data.tensors import load_tensors
from fmnist.engine.build import build_run
from fmnist.engine.graphs import load_optimizer_state
from fmnist.engine.param_groups import param_groups
from fmnist.engine.runner import train
from fmnist.engine.schedulers import triangle
from fmnist.errors import ConfigError
from fmnist.hparams import flat_hparams
from fmnist.models.air_cnn import AirCNN, Whitening
from fmnist.tta import shift, tta_logits, views
from tests.conftest import compose_cfg, run_command

AIR = ["model=air_cnn", "model.width1=8", "model.width2=16", "model.width3=16"]


def quick(data_root, tmp_path, extra, name="run"):
    cfg = compose_cfg(
        [*AIR, "limit_test_batches=1", "callbacks.progress.bar=false", *extra],
        data_root,
        output_dir=tmp_path / name,
    )
    return cfg


def test_whitening_decorrelates_patches_and_is_computed_from_training_images_only(
    data_root, tmp_path
):
    cfg = quick(data_root, tmp_path, ["seed=3"])
    run = build_run(cfg, tmp_path, flat_hparams(cfg))
    w = run.model.whiten.weight.detach().double()
    # the images it was fit to: the training split's, drawn by the run's seed
    sample = run.data.train.sample_images(5000, 3).double()
    patches = torch.nn.functional.unfold(sample, 2).transpose(1, 2).reshape(-1, 4)
    whitened = patches @ w.reshape(8, 4).T + run.model.whiten.bias.double()
    assert whitened.mean(0).abs().max() < 1e-6  # centred by its biases
    whitened = whitened[:, :4]
    cov = whitened.T @ whitened / len(whitened)
    off = cov - torch.diag(cov.diag())
    assert off.abs().max() < 1e-4  # decorrelated; unit variance but for eps on the least one
    assert ((cov.diag() > 0.85) & (cov.diag() <= 1.0)).all(), cov.diag()
    assert torch.equal(w[4:], -w[:4])  # +/- each filter
    assert not any(p.requires_grad for p in run.model.whiten.parameters())  # never trained
    tensors = load_tensors(data_root)
    train_set = {bytes(img.numpy()) for img in run.data.train.images}
    val_set = {bytes(img.numpy()) for img in run.data.val.images}
    test_set = {bytes(img.numpy()) for img in tensors["test_images"]}
    drawn = {bytes((x[0] * 255).round().to(torch.uint8).numpy()) for x in sample.float()}
    assert drawn <= train_set and not drawn & (val_set - train_set) and not drawn & test_set
    # deterministic for a seed; another seed draws other images (a slightly different fit)
    again = build_run(cfg, tmp_path, flat_hparams(cfg)).model.whiten.weight
    assert torch.equal(again, run.model.whiten.weight)
    with open_dict(cfg):
        cfg.seed = 4
    other = build_run(cfg, tmp_path, flat_hparams(cfg)).model.whiten.weight
    assert not torch.equal(other, run.model.whiten.weight)
    assert torch.allclose(other.abs(), run.model.whiten.weight.abs(), rtol=0.1, atol=0.5)


def test_whitening_fit_on_any_images_whitens_them():
    layer = Whitening(3)
    images = torch.rand(200, 1, 12, 12) * torch.linspace(0.2, 1, 12)  # correlated, uneven pixels
    layer.fit(images)
    patches = torch.nn.functional.unfold(images, 3).transpose(1, 2).reshape(-1, 9).double()
    out = (patches - patches.mean(0)) @ layer.weight.double()[:9].reshape(9, 9).T
    cov = out.T @ out / len(out)
    assert (cov - torch.diag(cov.diag())).abs().max() < 1e-4 and (cov.diag() > 0.8).all()


def test_air_cnn_starts_from_identity_convolutions_and_trains():
    model = AirCNN(8, 16, 32)
    first = model.groups[0][0].weight  # 8 -> 8 channels: dirac on the first 8 outputs
    assert torch.equal(first[:8, :, 1, 1], torch.eye(8)) and first[:8].abs().sum() == 8
    assert AirCNN(8, 16, 32, dirac=False).groups[0][0].weight[:8, :, 1, 1].abs().sum() != 8
    out = model(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.sum().backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    with pytest.raises(ValueError, match="bn_momentum"):
        AirCNN(bn_momentum=0)


def test_tta_views_weigh_one_and_match_between_torch_and_numpy():
    x = np.random.default_rng(0).random((3, 1, 6, 6), dtype=np.float32)
    for tta, translate, count in ((False, 0, 1), (True, 0, 2), (True, 1, 6), (True, 2, 6)):
        ours, theirs = views(x, tta, translate), views(torch.from_numpy(x), tta, translate)
        assert len(ours) == count and sum(w for w, _ in ours) == pytest.approx(1.0)
        for (w1, a), (w2, b) in zip(ours, theirs, strict=True):
            assert w1 == w2 and np.array_equal(a, b.numpy()) and a.flags["C_CONTIGUOUS"]
    moved = shift(torch.from_numpy(x), 1)
    assert torch.equal(moved[..., 1:, 1:], torch.from_numpy(x)[..., :-1, :-1])
    assert moved[..., 0, :].abs().sum() == 0 and moved[..., :, 0].abs().sum() == 0
    constant = tta_logits(lambda v: torch.ones(len(v), 10), torch.from_numpy(x), True, 1)
    assert torch.allclose(constant, torch.ones(3, 10))  # a weighted mean, not a sum


@pytest.mark.slow
def test_multi_crop_tta_gives_a_translated_image_nearly_the_same_prediction(
    data_root, tmp_path, capsys
):
    """A real (short) air_cnn run with flip + 1-pixel TTA; its checkpoint, fmnist-evaluate and
    fmnist-predict use and record the same TTA, and a copy of each test image shifted by one
    pixel gets nearly the same TTA prediction."""
    run_dir = tmp_path / "run"
    cfg = quick(
        data_root,
        tmp_path,
        ["tta=true", "tta_translate=1", "epochs=1", "limit_train_batches=60", "batch_size=128"],
        name="run",
    )
    row = train(cfg)
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["tta"] is True and ckpt["tta_translate"] == 1
    assert json.loads((run_dir / "results.json").read_text())[0]["tta_translate"] == 1
    from fmnist.run.checkpoint import load_trained

    model = load_trained(run_dir, "best").model
    x = load_tensors(data_root)["test_images"][:1000].unsqueeze(1).float() / 255
    with torch.inference_mode():
        probs = {
            (tta, d): tta_logits(model, shift(x, d) if d else x, tta, tta).softmax(1)
            for tta in (False, True)
            for d in (0, 1)
        }

    def stability(tta: bool) -> tuple[float, float]:  # argmax agreement, mean L1 distance
        a, b = probs[tta, 0], probs[tta, 1]
        return (a.argmax(1) == b.argmax(1)).float().mean().item(), (a - b).abs().sum(1).mean()

    (agree, distance), (agree_plain, distance_plain) = stability(True), stability(False)
    # after 60 steps without translation in training, the views it shares with the shifted copy
    # keep the TTA probabilities closer than the plain ones (measured: L1 0.13 against 0.21;
    # argmax agreement 0.912 and 0.914)
    assert agree >= 0.9 and distance < 0.75 * distance_plain, (
        agree,
        agree_plain,
        distance,
        distance_plain,
    )
    out = run_command("evaluate", run_dir, capsys=capsys)  # its main(), in this process
    assert "with flip + 1-pixel shift TTA" in out.stdout
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["tta_translate"] == 1 and result["tta"] is True
    labels = load_tensors(data_root)["test_labels"][:1000]  # what training evaluated (1 batch)
    trained_as = (probs[True, 0].argmax(1) == labels).float().mean().item()
    assert trained_as == pytest.approx(row["test_accuracy"], abs=1e-6)  # the same TTA as training
    assert abs(result["accuracy"] - trained_as) < 0.05  # all 10,000 images against the first 1,000
    off = run_command("evaluate", run_dir, "--tta-translate", "0", capsys=capsys)
    assert "with flip TTA:" in off.stdout


def test_param_groups_give_norm_parameters_their_own_rate_and_decay():
    model = AirCNN(8, 16, 16)
    groups = param_groups(model, {"norm": {"lr_scale": 64.0, "weight_decay": 0.0}}, lr=0.1)
    kinds = {g["kind"]: g for g in groups}
    assert kinds["norm"]["lr"] == pytest.approx(6.4) and kinds["norm"]["weight_decay"] == 0.0
    assert "lr" not in kinds["weight"]  # the optimizer's own lr and decay
    norm_ids = {id(p) for p in kinds["norm"]["params"]}
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norm_ids == {id(m.bias) for m in bns}  # BN scales are frozen in air_cnn
    assert "bias" not in kinds  # air_cnn's only biases: BatchNorm's, and the fixed whitening's
    every = [p for g in groups for p in g["params"]]
    assert (
        len(every)
        == len({id(p) for p in every})
        == sum(p.requires_grad for p in model.parameters())
    )
    assert len(param_groups(model, {}, lr=0.1)) == 1  # no settings: one group, as before
    with pytest.raises(ValueError, match="param_groups.head"):
        param_groups(model, {"head": {"lr_scale": 2.0}}, lr=0.1)
    # one SGD step: a norm bias moves lr_scale times as far as with the plain rate
    torch.manual_seed(0)
    a, b = AirCNN(8, 16, 16), AirCNN(8, 16, 16)
    b.load_state_dict(a.state_dict())
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    moved = []
    for net, settings in ((a, {}), (b, {"norm": {"lr_scale": 64.0}})):
        opt = torch.optim.SGD(param_groups(net, settings, lr=0.01), lr=0.01)
        before = net.groups[0][2].bias.detach().clone()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        moved.append(net.groups[0][2].bias.detach() - before)
    assert torch.allclose(moved[1], 64 * moved[0], rtol=1e-4, atol=1e-9)


def test_param_groups_reach_the_run_and_one_cycle_keeps_their_ratio(data_root, tmp_path):
    cfg = quick(
        data_root,
        tmp_path,
        ["optimizer=sgd", "scheduler=onecycle", "lr=0.05", "param_groups.norm.lr_scale=8"],
    )
    run = build_run(cfg, tmp_path, flat_hparams(cfg))
    rates = {g["kind"]: g["lr"] for g in run.optimizer.param_groups}
    assert rates["norm"] == pytest.approx(8 * rates["weight"])
    assert run.optimizer.param_groups[0]["kind"] == "weight"  # lr_current is the plain rate
    for _ in range(30):
        run.optimizer.step()
        run.scheduler.step()
    rates = {g["kind"]: g["lr"] for g in run.optimizer.param_groups}
    assert rates["norm"] == pytest.approx(8 * rates["weight"])
    for bad, match in (
        ("param_groups.norm.lr_scale=0", "param_groups.norm.lr_scale=0.0 is invalid"),
        ("param_groups.bias.weight_decay=-1", "param_groups.bias.weight_decay=-1.0 is invalid"),
        ("weight_decay_epochs=0", "weight_decay_epochs=0 is invalid"),
    ):
        with pytest.raises(ConfigError, match=match):
            train(quick(data_root, tmp_path, [bad], name="bad"))
    with pytest.raises(Exception, match="head"):  # an unknown kind fails at composition
        quick(data_root, tmp_path, ["param_groups.head.lr_scale=2"])


def test_weight_decay_epochs_keeps_the_total_decay_of_the_length_it_was_set_for(
    data_root, tmp_path
):
    decays, runs = {}, {}
    for epochs in (5, 20):
        cfg = quick(
            data_root,
            tmp_path,
            ["optimizer=sgd", "optimizer.weight_decay=1e-3", "param_groups.norm.weight_decay=2e-5"]
            + [f"epochs={epochs}", "weight_decay_epochs=10"],
            name=f"e{epochs}",
        )
        runs[epochs] = build_run(cfg, tmp_path, flat_hparams(cfg))
        decays[epochs] = {g["kind"]: g["weight_decay"] for g in runs[epochs].optimizer.param_groups}
    # per epoch x epochs = the same total: twice the decay for half the length, half for twice
    assert decays[5] == pytest.approx({"weight": 2e-3, "norm": 4e-5})
    assert decays[20] == pytest.approx({"weight": 5e-4, "norm": 1e-5})
    # a 5-epoch run trained further to 20: its checkpoint's decays give way to the new length's
    load_optimizer_state(runs[20].optimizer, runs[5].optimizer.state_dict())
    assert {g["kind"]: g["weight_decay"] for g in runs[20].optimizer.param_groups} == decays[20]


def test_triangle_schedule_rises_then_falls_linearly():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = triangle(opt, total_steps=100, start=0.2, peak_at=0.25, end=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 25 and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    rising, falling = np.diff(lrs[:26]), np.diff(lrs[25:])
    assert np.allclose(rising, rising[0]) and np.allclose(falling, falling[0]) and falling[0] < 0
    with pytest.raises(ValueError, match="scheduler.peak_at=1.5"):
        triangle(opt, 100, peak_at=1.5)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch(data_root):
    from fmnist.data.augment import Augment
    from fmnist.data.loaders import MemoryLoader

    tensors = load_tensors(data_root)
    images, labels = tensors["test_images"][:300], tensors["test_labels"][:300]
    plain = MemoryLoader(images, labels, 100, shuffle=False, seed=5)
    flips = MemoryLoader(
        images, labels, 100, shuffle=False, seed=5, augment=Augment(hflip=True, alternate_flip=True)
    )
    original = torch.cat([x for x, _ in plain.epoch(1)])
    mirrored = {}
    for epoch in (1, 2, 3):
        seen = torch.cat([x for x, _ in flips.epoch(epoch)])
        is_flip = (seen == original.flip(-1)).flatten(1).all(1)
        is_same = (seen == original).flatten(1).all(1)
        symmetric = is_flip & is_same  # a blank-symmetric image counts as both
        assert (is_flip | is_same).all()
        mirrored[epoch] = is_flip & ~symmetric
    assert 0.35 < mirrored[1].float().mean() < 0.65
    assert not (mirrored[1] & mirrored[2]).any()  # never mirrored two epochs running
    assert torch.equal(mirrored[1], mirrored[3])
    shuffled = MemoryLoader(
        images, labels, 100, shuffle=True, seed=5, augment=Augment(hflip=True, alternate_flip=True)
    )
    for epoch in (1, 2):  # with shuffling, each image still follows its own alternation
        x = torch.cat([x for x, _ in shuffled.epoch(epoch)])
        y = torch.cat([y for _, y in shuffled.epoch(epoch)])
        assert len(x) == 300 and torch.equal(y.sort().values, labels.sort().values)
    with pytest.raises(ConfigError, match="alternate_flip"):
        train(
            compose_cfg(
                ["data.augment.alternate_flip=true", "data.augment.hflip=false"],
                data_root,
                output_dir=data_root / "never",
            )
        )


def test_eval_every_skips_evaluation_but_never_the_last_epoch(data_root, tmp_path, caplog):
    caplog.set_level("INFO", logger="fmnist")
    cfg = quick(
        data_root,
        tmp_path,
        ["epochs=5", "eval_every=2", "limit_train_batches=3", "batch_size=64"],
    )
    row = train(cfg)
    run_dir = tmp_path / "run"
    rows = json.loads((run_dir / "results.json").read_text())
    assert [("val_accuracy" in r, "test_accuracy" in r) for r in rows] == [
        (False, False),
        (True, True),
        (False, False),
        (True, True),
        (True, True),
    ]
    assert row["epoch"] == 5 and "test_accuracy" in row
    status = json.loads((run_dir / "status.json").read_text())
    assert status["best"]["epoch"] in (2, 4, 5) and status["test_accuracy"] is not None
    csv_lines = (run_dir / "results.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert header[:3] == ["run", "epoch", "loss"]
    assert csv_lines[1].split(",")[header.index("val_accuracy")] == ""  # an empty cell
    table = [r.getMessage() for r in caplog.records if r.getMessage().lstrip().startswith("1 ")]
    assert table and table[0].split()[3:7] == ["-"] * 4  # "-" where nothing was evaluated
    from fmnist.commands.compare.table import summarize

    summary = summarize(tmp_path)
    assert [e for e, _ in summary.epochs["run"]] == [2, 4, 5]
