"""torch.profiler over a few training steps (debug=profile): an operator table and a Chrome trace."""

from __future__ import annotations

from typing import Any

from torch.profiler import ProfilerActivity, profile, schedule

from fmnist.callbacks.base import Callback, RunState


class ProfilerCallback(Callback):
    def __init__(self, wait: int = 3, warmup: int = 2, active: int = 20, row_limit: int = 15):
        self.wait, self.warmup, self.active, self.row_limit = wait, warmup, active, row_limit
        self.prof: profile | None = None
        self.steps = 0

    def on_run_start(self, state: RunState) -> None:
        activities = [ProfilerActivity.CPU]
        if state.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.trace = state.run_dir / "profile" / "trace.json"
        self.log = state.log  # the profile table goes to this run's log
        self.trace.parent.mkdir(parents=True, exist_ok=True)
        self.prof = profile(
            activities=activities,
            schedule=schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1),
            on_trace_ready=self._ready,
            record_shapes=True,
        )
        self.prof.start()

    def _ready(self, prof: profile) -> None:
        prof.export_chrome_trace(str(self.trace))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.row_limit)
        self.log.info(
            "profile of %d training steps (trace: %s)\n%s", self.active, self.trace, table
        )

    def on_batch_end(self, state: RunState, batch_idx: int) -> None:
        if self.prof is not None:
            self.prof.step()
            self.steps += 1
            if self.steps >= self.wait + self.warmup + self.active:
                self._stop()

    def _stop(self) -> None:
        if self.prof is not None:
            self.prof.stop()
            self.prof = None

    def on_run_end(self, state: RunState) -> None:
        if self.prof is not None and self.steps < self.wait + self.warmup + self.active:
            state.log.warning(
                "the run had only %d steps: fewer than the profiler's schedule", self.steps
            )
        self._stop()

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        self._stop()

    def state_dict(self) -> dict[str, Any]:
        return {}
