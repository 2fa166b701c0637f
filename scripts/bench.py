"""Speed benchmark: this project's training path against the article's loop, in one process.

    python scripts/bench.py            # or: make bench   (writes bench.json)
    python scripts/bench.py --device cuda --grid-epochs 5   # the GPU row


Everything is measured here and now on the real data, interleaved, medians reported, so the
ratios hold on a noisy shared machine. Not a test: it prints the targets and whether they are met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import fmnist.resolvers  # noqa: F401  (the schema and the resolvers)
from fmnist.callbacks.base import Callback, Tracker
from fmnist.callbacks.status import peak_rss_mb
from fmnist.data import ensure_data
from fmnist.engine.build import build_run
from fmnist.engine.fit import fit_one
from fmnist.engine.runtime import decide_bf16, pick_device
from fmnist.hparams import flat_hparams
from fmnist.models.seed_cnn import SeedCNN
from fmnist.run import provenance

ROOT = Path(__file__).resolve().parent.parent


class EpochTimer(Callback):
    """Marks each epoch start and the run end: full epochs, evaluation and callbacks included."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_epoch_start(self, state) -> None:  # noqa: ANN001
        self.marks.append(time.perf_counter())

    def on_run_end(self, state) -> None:  # noqa: ANN001
        self.marks.append(time.perf_counter())

    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


class ArticleNetwork(SeedCNN):
    """The article's forward as written: ReLU before each max-pool (SeedCNN pools first)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = F.max_pool2d(F.relu(self.conv1(t)), kernel_size=2, stride=2)
        t = F.max_pool2d(F.relu(self.conv2(t)), kernel_size=2, stride=2)
        t = F.relu(self.fc1(t.reshape(-1, 12 * 4 * 4)))
        t = F.relu(self.fc2(t))
        return self.out(t)


def article_epochs(root: str, batch_size: int, epochs: int, device: torch.device) -> list[float]:
    """The article's loop as written: DataLoader over FashionMNIST + ToTensor, Adam, no tracker.

    On a GPU, as the article's device=cuda runs: the network there, each batch moved with .to().
    """
    from torchvision import datasets, transforms

    train_set = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True)
    network = ArticleNetwork().to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    times = []
    for _ in range(epochs):
        start, total_loss, total_correct = time.perf_counter(), 0.0, 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            preds = network(images)
            loss = F.cross_entropy(preds, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * batch_size  # the article's track_loss
            total_correct += preds.argmax(dim=1).eq(labels).sum().item()
        times.append(time.perf_counter() - start)
    return times


def project_epochs(
    root: str,
    batch_size: int,
    epochs: int,
    callbacks: str,
    device: torch.device,
    overrides: tuple[str, ...] = (),
) -> list[float]:
    """This project's training path (build_run + fit, as `train(cfg)` runs them), with the default
    callbacks or none, on all 60,000 images like the article (data.val_size=0)."""
    with tempfile.TemporaryDirectory() as tmp:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "train",
                [
                    f"data.root={root}",
                    "data.val_size=0",
                    f"batch_size={batch_size}",
                    f"epochs={epochs}",
                    f"callbacks={callbacks}",
                    f"device={device}",
                    f"output_dir={tmp}",
                    *overrides,
                ],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        if "progress" in cfg.callbacks:
            cfg.callbacks.progress.bar = False
        run = build_run(cfg, Path(tmp), flat_hparams(cfg))
        timer = EpochTimer()
        run.tracker = Tracker({**run.tracker.named, "timer": timer})
        fit_one(run)
    return timer.epochs()


def train_step_flops(batch_size: int = 100) -> float:
    """FLOPs of one forward + backward of the article's network, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = SeedCNN(), torch.rand(batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch_size, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch_size


def gpu_peak_gflops(device: torch.device) -> tuple[float, str]:
    """The GPU's reference: a measured 4096^3 fp32 matrix product (TF32 off), as GFLOP/s."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.rand(4096, 4096, device=device)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ a
    torch.cuda.synchronize()
    gflops = reps * 2 * 4096**3 / (time.perf_counter() - start) / 1e9
    return gflops, f"{torch.cuda.get_device_name(device)} (fp32 matmul measured)"


def cpu_peak_gflops() -> tuple[float, str]:
    """A rough FP32 peak: cores x GHz x FLOPs per cycle from the widest SIMD the flags show."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return float("nan"), "unknown CPU"
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    model = next(
        (line.split(":")[1].strip() for line in info.splitlines() if line.startswith("model name")),
        "?",
    )
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8  # 2 FMA units x lanes x 2
    cores = len(os.sched_getaffinity(0))
    return cores * (max(mhz) / 1000 if mhz else 2.0) * per_cycle, f"{model}, {cores} cores"


def sweep_grid(root: str, epochs: int, device: torch.device) -> tuple[float, list[float]]:
    """The article's 4-run grid as one joblib sweep: wall seconds and each job's peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "-m",
                "hydra/launcher=joblib",
                "lr=0.01,0.001",
                "batch_size=100,1000",
                f"epochs={epochs}",
                f"device={device}",
                "data.val_size=0",  # all 60,000 images, like the article
                f"hydra.sweep.dir={tmp}/sweep",
            ],
            cwd=tmp,
            check=True,
            capture_output=True,
            env={**os.environ, "FMNIST_DATA": root},
        )
        wall = time.perf_counter() - start
        peaks = [
            json.loads(p.read_text()).get("peak_rss_mb", 0.0)
            for p in Path(tmp).rglob("status.json")
        ]
    return wall, peaks


def step_ms(
    model: torch.nn.Module, batch_size: int, bf16: bool, device: torch.device, steps: int = 30
) -> float:
    """Median milliseconds of one training step (channels_last, SGD), fp32 or bf16 autocast."""
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times = []
    for i in range(steps + 3):  # 3 warm-up steps
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def option_rows(root: str, device: torch.device, epochs: int) -> list[dict]:
    """The runtime options on this device, default callbacks, batch 100: what to switch on."""
    rows = []
    for name, overrides in (
        ("default", ()),
        ("runtime.cuda_graphs=false", ("runtime.cuda_graphs=false",)),
        ("runtime.channels_last=false", ("runtime.channels_last=false",)),
        ("runtime.bf16=true", ("runtime.bf16=true",)),
        ("runtime.compile=true", ("runtime.compile=true",)),
    ):
        try:
            times = project_epochs(root, 100, epochs, "default", device, overrides)
        except Exception as exc:  # an option that fails here is a finding, not the end
            rows.append({"option": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        rows.append(
            {
                "option": name,
                "first_epoch_s": times[0],
                "epoch_s": statistics.median(times[1:] or times),
            }
        )
    return rows


def bf16_rows(device: torch.device) -> list[dict]:
    """Why `experiment=fast` and `best_bn_cnn` set runtime.bf16=auto and the default does not:
    measured, interleaved."""
    from fmnist.models.air_cnn import AirCNN
    from fmnist.models.bn_cnn import BNCNN

    rows = []
    for name, make, bs in (
        ("seed_cnn", SeedCNN, 100),
        ("seed_cnn", SeedCNN, 1000),
        ("bn_cnn width 32", lambda: BNCNN(width=32), 128),
        ("air_cnn 24/48/96 (experiment=fast)", lambda: AirCNN(24, 48, 96), 256),
    ):
        fp32, bf16 = [], []
        for _ in range(3):
            fp32.append(step_ms(make(), bs, False, device))
            bf16.append(step_ms(make(), bs, True, device))
        rows.append(
            {
                "model": name,
                "batch_size": bs,
                "fp32_ms": statistics.median(fp32),
                "bf16_ms": statistics.median(bf16),
                "ratio": statistics.median(bf16) / statistics.median(fp32),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (median)")
    parser.add_argument(
        "--grid-epochs", type=int, default=5, help="epochs per run of the 4-run grid"
    )
    parser.add_argument("--no-grid", action="store_true", help="skip the sweep measurement")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    parser.add_argument(
        "--options", action="store_true", help="also time runtime options (always on a GPU)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench.json"))
    args = parser.parse_args()
    root = os.environ.get("FMNIST_DATA", str(ROOT / "data"))
    ensure_data(root)
    device = pick_device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    results: dict[str, dict] = {}
    for batch_size in (100, 1000):  # interleaved, so drift hits every case alike
        article, default, bare = [], [], []
        for _ in range(2):
            article += article_epochs(root, batch_size, max(1, args.epochs // 2 + 1), device)
            default += project_epochs(root, batch_size, args.epochs, "default", device)
            bare += project_epochs(root, batch_size, args.epochs, "none", device)
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        for name, times in (
            ("article loop", article),
            ("fmnist default", default),
            ("fmnist callbacks off", bare),
        ):
            results[f"{name} @ {batch_size}"] = {
                "batch_size": batch_size,
                "epoch_s": statistics.median(times),
                "samples": [round(t, 3) for t in times],
            }

    flops = train_step_flops()
    peak, machine = gpu_peak_gflops(device) if device.type == "cuda" else cpu_peak_gflops()
    rows, checks = [], []
    for key, r in results.items():
        base = results[f"article loop @ {r['batch_size']}"]["epoch_s"]
        r["images_per_s"] = 60000 / r["epoch_s"]
        r["ratio_vs_article"] = r["epoch_s"] / base
        r["gflops"] = flops * r["images_per_s"] / 1e9
        rows.append((key, r))
    for bs, limit in ((100, 0.40), (1000, 0.50)):
        ratio = results[f"fmnist default @ {bs}"]["ratio_vs_article"]
        checks.append((f"default epoch at batch {bs} <= {limit} x article", ratio, ratio <= limit))
    for bs in (100, 1000):
        overhead = (
            results[f"fmnist default @ {bs}"]["epoch_s"]
            / results[f"fmnist callbacks off @ {bs}"]["epoch_s"]
            - 1
        )
        checks.append((f"callbacks overhead at batch {bs} <= 10%", overhead, overhead <= 0.10))
    if device.type == "cuda":  # the article's 2019 GPU: 17.9 s an epoch
        epoch = results["fmnist default @ 100"]["epoch_s"]
        checks.append(("GPU: article's network at batch 100 <= 1.0 s an epoch", epoch, epoch <= 1))

    bf16 = bf16_rows(device)
    options = (
        option_rows(root, device, args.epochs) if args.options or device.type == "cuda" else []
    )

    grid = {}
    if not args.no_grid:
        sequential = sum(
            2 * args.grid_epochs * results[f"article loop @ {bs}"]["epoch_s"] for bs in (100, 1000)
        )
        wall, peaks = sweep_grid(root, args.grid_epochs, device)
        grid = {
            "article_sequential_s": sequential,
            "sweep_joblib_s": wall,
            "ratio": wall / sequential,
            "peak_rss_mb_per_job": peaks,
        }
        checks.append(
            (
                "4-run grid as joblib sweep <= 0.35 x article sequential",
                grid["ratio"],
                grid["ratio"] <= 0.35,
            )
        )
        checks.append(("peak memory per job < 1024 MiB", max(peaks), max(peaks) < 1024))

    git, _ = provenance.git_state()
    commit = provenance.short({"git": git})
    bf16_auto = decide_bf16("auto", device)[1]
    print(f"\nmachine: {machine}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"commit: {commit}; {bf16_auto}")
    print(
        f"device: {device}; training step: {flops / 1e6:.2f} MFLOP per image; "
        f"FP32 peak reference {peak:.0f} GFLOP/s\n"
    )
    print(f"{'case':<28} {'s/epoch':>8} {'img/s':>8} {'ratio':>6} {'GFLOP/s':>8} {'% peak':>7}")
    for key, r in rows:
        print(
            f"{key:<28} {r['epoch_s']:>8.2f} {r['images_per_s']:>8.0f} {r['ratio_vs_article']:>6.2f} "
            f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>6.1f}%"
        )
    if grid:
        print(
            f"\n4-run grid, {args.grid_epochs} epochs each: article sequential {grid['article_sequential_s']:.1f} s "
            f"(from the measured epochs), joblib sweep {grid['sweep_joblib_s']:.1f} s (measured, process start-up "
            f"included): ratio {grid['ratio']:.2f}; peak memory per job {max(grid['peak_rss_mb_per_job']):.0f} MiB"
        )
    print(f"\n{'train step, bf16 autocast vs fp32':<34} {'fp32 ms':>8} {'bf16 ms':>8} {'ratio':>6}")
    for r in bf16:
        name = f"{r['model']} @ {r['batch_size']}"
        print(f"{name:<34} {r['fp32_ms']:>8.1f} {r['bf16_ms']:>8.1f} {r['ratio']:>6.2f}")
    if options:
        print(f"\n{'runtime option, batch 100':<30} {'1st epoch s':>11} {'s/epoch':>8}")
        for r in options:
            if "error" in r:
                print(f"{r['option']:<30} failed: {r['error']}")
            else:
                print(f"{r['option']:<30} {r['first_epoch_s']:>11.2f} {r['epoch_s']:>8.2f}")
    print("\ntargets:")
    for name, value, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {name}: {value:.2f}")
    out = {
        "machine": machine,
        "commit": commit,
        "bf16_auto": bf16_auto,
        "device": str(device),
        "torch": torch.__version__,
        "flops_per_image": flops,
        "peak_gflops_estimate": peak,
        "cases": results,
        "grid": grid,
        "bf16_train_step": bf16,
        "runtime_options": options,
        "checks": [{"name": n, "value": v, "ok": ok} for n, v, ok in checks],
        "measured_peak_rss_mb_bench_process": peak_rss_mb(),
        "peak_gpu_memory_mb_bench_process": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
