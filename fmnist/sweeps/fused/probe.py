"""How many members a fused model should have here: measured, not assumed.

On a GPU, fusing small models pays because each step is a few dozen tiny kernels. On a CPU the
kernels are already busy, and K members' activations outgrow the caches: on the 2-core AMD EPYC
with AVX512-BF16 a fused step of 16 `bn_cnn` (width 16, batch 128) took twice as long as 16
steps one after another, while 16 `seed_cnn` at batch 100 gained. So the launcher times one
training step of the group's own model and batch size at K = 1, 2, 4, ... and fuses only as
many members as are fastest per member.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from fmnist.engine.fused_model import FusedModel, stack_inputs
from fmnist.engine.runtime import configure, decide_bf16, pick_device
from fmnist.models import build_model, model_spec

GAIN = 0.05  # a larger group must be this much faster per member to be chosen


def step_ms(task: DictConfig, k: int, steps: int = 5) -> float:
    """Fastest of `steps` timings of one training step of `k` fused members (forward, backward, SGD)."""
    device = pick_device(task.device)
    bf16 = decide_bf16(task.runtime.bf16, device)[0]
    channels_last = bool(task.runtime.channels_last)
    batch = int(task.batch_size)
    gen = torch.Generator().manual_seed(0)
    models = [build_model(model_spec(task.model)).to(device) for _ in range(k)]
    if channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    model = FusedModel(models) if k > 1 else models[0]
    model.train()
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-6)
    x = stack_inputs([torch.rand(batch, 1, 28, 28, generator=gen).to(device)] * k, channels_last)
    y = torch.randint(0, 10, (batch, k), generator=gen).to(device)
    times = []
    for i in range(steps + 2):  # the first two warm up
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext():
            logits = model(x)
        logits = logits.float().reshape(batch, k, -1)
        loss = F.cross_entropy(logits.permute(0, 2, 1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 1:
            times.append(time.perf_counter() - start)
    return min(times) * 1000  # the least disturbed: this machine shares its cores


def best_size(task: DictConfig, largest: int) -> tuple[int, dict[int, float]]:
    """The group size (1 to `largest`, powers of two and `largest`) with the fastest step per
    member, and the per-member milliseconds measured. Timings here vary by +-30 %, so one slower
    size does not end the search; a size 1.5x slower per member than the best does."""
    configure(task.runtime)  # the threads the training will use
    sizes = sorted({min(2**i, largest) for i in range(largest.bit_length() + 1)})
    per_member: dict[int, float] = {}
    best = 1
    for k in sizes:
        per_member[k] = step_ms(task, k) / k
        if per_member[k] < per_member[best] * (1 - GAIN):
            best = k
        elif per_member[k] > 1.5 * per_member[best]:
            break
    return best, per_member
