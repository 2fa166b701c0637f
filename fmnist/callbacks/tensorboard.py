"""TensorBoard, in the run's own directory: what the article logs and PyTorch's own Fashion-MNIST
tutorial shows (scalars, images, graph, histograms, HParams, confusion matrix, misclassified images,
projector embeddings, per-class PR curves, predictions vs truth, a custom-scalars layout)."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from fmnist import CLASSES
from fmnist.callbacks.base import Callback, RunState
from fmnist.metrics import METRICS
from fmnist.plots import confusion_image, image_grid, misclassified_image, predictions_image
from fmnist.run.provenance import as_markdown

SCALARS = {m.tag: m.name for m in METRICS if m.tag}  # tag -> results column
HPARAM_METRICS = (
    "Accuracy/val",
    "Loss/val",
    "Accuracy/test",
    "Loss/test",
    "Accuracy/train",
    "Loss/train",
)
LAYOUT = {  # custom scalars: the three splits on one chart each
    "Compare splits": {
        "Loss": ["Multiline", ["Loss/train", "Loss/val", "Loss/test"]],
        "Accuracy": ["Multiline", ["Accuracy/train", "Accuracy/val", "Accuracy/test"]],
    }
}


def file_writer(writer: SummaryWriter) -> Any:
    """The writer's own event file. `add_hparams` would open a second, timestamped run; writing the
    HParams summaries here keeps one run per job. Private in torch (tests/test_tensorboard_unit.py
    fails if torch renames it)."""
    return writer._get_file_writer()


def write_experiment(log_dir: Any, varying: dict[str, Any], constants: dict[str, Any]) -> None:
    """A sweep's HParams experiment: TensorBoard lists (and checks) the hyperparameters that
    vary first, the constants after, and the metrics named. A sweep's jobs write their sessions
    only, so this is the one experiment TensorBoard finds."""
    values = {k: hparam_value(v) for k, v in {**varying, **constants}.items()}
    exp, _, _ = hparams_summaries(values, dict.fromkeys(HPARAM_METRICS, 0.0))
    data = plugin_data_pb2.HParamsPluginData()
    value = exp.value[0]
    data.ParseFromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in varying
    value.metadata.plugin_data.content = data.SerializeToString()
    writer = SummaryWriter(log_dir=str(log_dir))
    file_writer(writer).add_summary(exp)
    writer.close()


def hparam_value(value: Any) -> int | float | str | bool:
    return value if isinstance(value, int | float | str | bool) else str(value)


class TensorBoardCallback(Callback):
    def __init__(
        self,
        log_graph: bool = True,
        log_images: bool = True,
        histogram_interval: int = 1,  # epochs between weight/gradient histograms; 0 = never
        figure_interval: int = 1,  # epochs between figures, PR curves, embeddings; 0 = end only
        figure_budget: float = 0.05,  # most of the run's time figures may take; 0 = no limit
        hparams: bool = True,
        embedding_samples: int = 1000,  # projector sample of validation (else test) images; 0 = off
        embedding_interval: int = 0,  # epochs between projector embeddings; 0 = at the end only
        pr_curves: bool = True,
        prediction_images: int = 16,  # the predictions-vs-truth figure; 0 = off
        sweep_dir: str | None = None,  # set in a multirun: the sweep writes the HParams experiment
    ):
        self.log_graph, self.log_images, self.hparams = log_graph, log_images, hparams
        self.histogram_interval, self.figure_interval = histogram_interval, figure_interval
        if not 0 <= figure_budget <= 1:
            raise ValueError(f"figure_budget={figure_budget} must be between 0 and 1")
        self.figure_budget = figure_budget
        self._figure_s, self._figure_cost = 0.0, None  # seconds spent drawing; the last drawing
        self._decided: tuple[int, bool] | None = None  # (epoch, draw figures at that epoch)
        self.embedding_samples, self.pr_curves = embedding_samples, pr_curves
        self.embedding_interval = embedding_interval  # ~0.3 s each on 2 CPU cores: not every epoch
        self.prediction_images = prediction_images
        self.in_sweep = bool(sweep_dir)
        self.writer: SummaryWriter | None = None
        self._sample: tuple[torch.Tensor, torch.Tensor] | None = None  # images shown each epoch

    def on_run_start(self, state: RunState) -> None:
        # purge_step drops events a crashed attempt wrote after its last checkpoint
        purge = state.start_epoch + 1 if state.resumed else None
        self.writer = SummaryWriter(log_dir=str(state.run_dir), purge_step=purge, flush_secs=30)
        if self.hparams:
            values = {k: hparam_value(v) for k, v in state.hparams.items()}
            metrics = [m for m in HPARAM_METRICS if state.data.val is not None or "/val" not in m]
            exp, ssi, _ = hparams_summaries(values, dict.fromkeys(metrics, 0.0))
            if not self.in_sweep:  # a sweep's experiment is the sweep's (write_experiment)
                file_writer(self.writer).add_summary(exp)
            file_writer(self.writer).add_summary(ssi)
        if state.provenance:
            self.writer.add_text("provenance", as_markdown(state.provenance), state.start_epoch)
        if state.resumed:
            return  # graph, layout and sample images are already in this run
        self.writer.add_custom_scalars(LAYOUT)
        images, _ = next(iter(state.data.train.epoch(0)))
        images = images[:64].float().cpu().contiguous()
        if self.log_images:
            self.writer.add_image("images", image_grid(images, nrow=8), 0)
        if self.log_graph:
            self._graph(state, images)
        self.writer.flush()

    def _graph(self, state: RunState, images: torch.Tensor) -> None:
        try:
            model = state.model
            was_training = model.training
            model.eval()
            with warnings.catch_warnings():  # add_graph uses jit.trace, deprecated in 2.9+
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, images.to(state.device)[:8])
            model.train(was_training)
        except Exception as exc:  # tracing is best effort: some models don't trace
            state.log.warning("could not log the network graph: %s", exc)

    def wants_outputs(self, state: RunState) -> bool:
        """Figures are drawn at the first and the last epoch, and every `figure_interval` epochs
        while drawing them has taken at most `figure_budget` of the run's time (~0.2 s each on
        2 CPU cores, against epochs of 2 s at batch 1000). An early stop at another epoch draws
        them without PR curves and misclassified images."""
        if self._decided is None or self._decided[0] != state.epoch:
            last = state.epoch == state.cfg.epochs
            due = bool(self.figure_interval and state.epoch % self.figure_interval == 0)
            if due and not last and self.figure_budget and self._figure_cost is not None:
                spent = self._figure_s + self._figure_cost
                due = spent <= self.figure_budget * (time.perf_counter() - state.run_start)
            self._decided = (state.epoch, last or due)
        return self._decided[1]

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        w, epoch = self.writer, state.epoch
        for tag, column in SCALARS.items():
            value = row.get(column)
            if isinstance(value, int | float) and math.isfinite(value):
                w.add_scalar(tag, value, epoch)
        if self.histogram_interval and epoch % self.histogram_interval == 0:
            for name, param in state.model.named_parameters():
                w.add_histogram(name, param.detach().float().cpu(), epoch)
                if param.grad is not None:
                    w.add_histogram(f"{name}.grad", param.grad.detach().float().cpu(), epoch)
        last = epoch == state.cfg.epochs or bool(state.should_stop)
        if "test" in state.evals and (last or self.wants_outputs(state)):
            embed = last or bool(self.embedding_interval and epoch % self.embedding_interval == 0)
            start = time.perf_counter()
            self._figures(state, epoch, embed)
            self._figure_cost = time.perf_counter() - start
            self._figure_s += self._figure_cost
        w.flush()

    def _figures(self, state: RunState, epoch: int, embed: bool) -> None:
        w, test = self.writer, state.evals.get("test")
        if test is not None:
            w.add_image(
                "ConfusionMatrix/test", confusion_image(test["confusion"]), epoch, dataformats="HWC"
            )
            if len(test.get("wrong_images", ())):
                grid = misclassified_image(
                    test["wrong_images"], test["wrong_preds"], test["wrong_targets"]
                )
                w.add_image("Misclassified/test", grid, epoch, dataformats="HWC")
        split = "val" if state.data.val is not None else "test"
        loader = state.data.val if split == "val" else state.data.test
        embed = embed and self.embedding_samples > 0
        n = max(self.embedding_samples if embed else 0, self.prediction_images)
        if self._sample is None or len(self._sample[1]) < n:  # the same images every epoch
            self._sample = sample(loader, n)
        images, labels = self._sample[0][:n], self._sample[1][:n]
        model = state.eval_model
        with torch.inference_mode():
            was_training = model.training
            model.eval()
            features, logits = penultimate(model, images.to(state.device))
            model.train(was_training)
        probs = logits.float().softmax(1).cpu()
        if self.pr_curves and split in state.evals and "probs" in state.evals[split]:
            ev = state.evals[split]
            for i, name in enumerate(CLASSES):
                w.add_pr_curve(f"PR/{name}", ev["labels"] == i, ev["probs"][:, i], epoch)
        if self.prediction_images:
            k = self.prediction_images
            w.add_image(
                f"Predictions/{split}",
                predictions_image(images[:k], probs[:k], labels[:k]),
                epoch,
                dataformats="HWC",
            )
        if embed:
            n = self.embedding_samples
            preds = probs[:n].argmax(1)
            meta = [
                [CLASSES[t], CLASSES[p], str(bool(t == p))]
                for t, p in zip(labels[:n].tolist(), preds.tolist(), strict=True)
            ]
            w.add_embedding(
                features[:n].float().cpu(),
                metadata=meta,
                metadata_header=["true", "predicted", "correct"],
                label_img=images[:n].float().cpu(),
                global_step=epoch,
                tag=f"features/{split}",
            )

    def _close(self, status: str) -> None:
        if self.writer is None:
            return
        if self.hparams:
            file_writer(self.writer).add_summary(session_end(status))
        self.writer.close()
        self.writer = None

    def on_run_end(self, state: RunState) -> None:
        self._close("STATUS_SUCCESS")

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        self._close("STATUS_RUNNING" if isinstance(exc, KeyboardInterrupt) else "STATUS_FAILURE")


def sample(loader: Any, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded sample of a split (the same images every epoch and every run)."""
    batches = [(x.float().cpu().contiguous(), y.cpu()) for x, y in loader.epoch(0)]
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[keep], labels[keep]


def penultimate(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the input of the model's last linear layer, the logits): the features the classifier sees."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1), logits


def session_end(status: str) -> Summary:
    """HParams session-end summary with a real status (torch's always says success)."""
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status)),
        version=metadata.PLUGIN_DATA_VERSION,
    ).SerializeToString()
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content)
    value = Summary.Value(
        tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin)
    )
    return Summary(value=[value])
