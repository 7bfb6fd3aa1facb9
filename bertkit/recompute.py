"""Activation recomputation for BERT encoders: less memory for a little more time.

Methods:
- Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost", section 3-4: keep only the
  outputs at segment boundaries during the forward pass, and recompute each segment's
  internals from its boundary when the backward pass reaches it.  ``full`` uses one encoder
  layer per segment; ``every-k`` uses segments of k layers, k = ceil(sqrt(n)) by default (their
  O(sqrt n) schedule).  As the paper notes (section 4.1), the last segment need not be
  recomputed: its activations are consumed at once by the backward pass, so it is left
  un-checkpointed at no cost in peak memory.
- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  section 5 (selective activation recomputation): inside each layer keep the outputs of the
  matrix multiplications, which are expensive to recompute, and recompute the cheap but large
  tensors (attention scores and probabilities, softmax, GELU output, dropout masks, LayerNorm).
  Implemented with PyTorch's selective checkpoint contexts, op by op.
- ``ffn-keep``: our policy between the two.  A layer is recomputed fully except the output
  projection of its feed-forward block, whose result (one hidden-sized tensor) is kept: that
  matmul is 4/13 of a BERT layer's forward FLOPs at hidden 768 and sequence 512, so keeping one
  extra hidden-sized tensor per layer removes ~30% of full recomputation's extra time.

All policies use non-reentrant ``torch.utils.checkpoint`` with the RNG state preserved, so dropout
masks in the recomputation equal the original ones and gradients equal those without
recomputation.  Non-reentrant checkpointing also gives correct gradients when the inputs do not
require grad (frozen embeddings: the reentrant variant silently returns None gradients) and
works under DDP and autocast.

Peak memory on CPU: torch has no ``max_memory_allocated`` for the CPU allocator, so
:func:`measure_step` records the profiler's memory events (every allocation and free made by
torch during one training step, in order) and takes the peak of their running sum.  Gradients
are allocated by a warm-up step before measuring, so the figure is what the step adds on top
of weights, gradients and optimizer state: activations and temporaries, the same quantity as
``torch.cuda.max_memory_allocated() - memory_allocated()`` before the step on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import statistics
import time
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from .errors import BertkitError

POLICIES = ("none", "full", "ffn-keep", "selective", "every-k")
MATMUL_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    mode: str  # "keep" (no checkpoint), "full", "ffn-keep", "selective"


def plan(policy: str, n_layers: int, k: int | None = None) -> list[Segment]:
    """Split ``n_layers`` into checkpointed segments; the last layer is never recomputed."""
    if policy not in POLICIES:
        raise BertkitError(f"unknown recompute policy {policy!r} (choose from {', '.join(POLICIES)}, auto)")
    if policy == "none" or n_layers == 0:
        return [Segment(0, n_layers, "keep")]
    if policy == "every-k":
        k = k or math.ceil(math.sqrt(n_layers))
        if k < 1:
            raise BertkitError("--every-k must be at least 1")
        bounds = list(range(0, n_layers - 1, k)) + [n_layers - 1]
        segments = [Segment(a, b, "full") for a, b in zip(bounds, bounds[1:])]
    else:
        segments = [Segment(i, i + 1, policy) for i in range(n_layers - 1)]
    return segments + [Segment(n_layers - 1, n_layers, "keep")]


def _selective_policy(intermediate_size: int, keep: str):
    def policy(ctx, op, *args, **kwargs):
        if op not in MATMUL_OPS:
            return CheckpointPolicy.PREFER_RECOMPUTE
        if keep == "all-matmuls":
            return CheckpointPolicy.MUST_SAVE
        # ffn output projection: an (add)mm whose reduction dimension is the FFN width
        left = args[1] if op is torch.ops.aten.addmm.default else args[0]
        is_ffn_out = left.dim() == 2 and left.shape[-1] == intermediate_size
        return CheckpointPolicy.MUST_SAVE if is_ffn_out else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _context_fn(mode: str, intermediate_size: int) -> Callable | None:
    if mode == "selective":
        return functools.partial(create_selective_checkpoint_contexts, _selective_policy(intermediate_size, "all-matmuls"))
    if mode == "ffn-keep":
        return functools.partial(create_selective_checkpoint_contexts, _selective_policy(intermediate_size, "ffn-out"))
    return None


def find_encoder(model: nn.Module) -> nn.Module:
    """The module holding the stack of transformer layers (``.layer``, a ModuleList)."""
    for module in model.modules():
        if isinstance(getattr(module, "layer", None), nn.ModuleList) and hasattr(module, "forward"):
            return module
    raise BertkitError(f"{type(model).__name__} has no BERT-style encoder (a module with a .layer list)")


def _segmented_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                       encoder_attention_mask=None, cache=None, use_cache=None, **kwargs):
    if encoder_hidden_states is not None or use_cache:
        raise BertkitError("activation recomputation supports encoder-only models (no cross-attention, no cache)")
    for seg in self._bertkit_segments:
        layers = self.layer[seg.start : seg.end]

        def run(hidden, mask, layers=layers):
            for layer in layers:
                hidden = layer(hidden, mask, **kwargs)
            return hidden

        if seg.mode == "keep" or not torch.is_grad_enabled():
            hidden_states = run(hidden_states, attention_mask)
        else:
            context = _context_fn(seg.mode, self._bertkit_intermediate)
            extra = {"context_fn": context} if context else {}
            hidden_states = checkpoint(run, hidden_states, attention_mask, use_reentrant=False,
                                       preserve_rng_state=True, **extra)
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states)


def apply_recompute(model: nn.Module, policy: str, k: int | None = None) -> list[Segment]:
    """Make ``model``'s encoder recompute activations by ``policy``; returns the segment plan.

    The weights and their names are untouched, so saving and loading are unaffected.
    """
    encoder = find_encoder(model)
    segments = plan(policy, len(encoder.layer), k)
    if policy == "none":
        encoder.__dict__.pop("forward", None)
        return segments
    encoder._bertkit_segments = segments
    encoder._bertkit_intermediate = model.config.intermediate_size
    encoder.forward = types.MethodType(_segmented_forward, encoder)
    return segments


# ---------------------------------------------------------------- measuring and choosing


@dataclass
class StepProfile:
    policy: str
    peak_bytes: int
    seconds: float


def peak_allocated_during(fn: Callable[[], None]) -> int:
    """Peak of (bytes allocated - bytes freed) by torch on the CPU while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # one "[memory]" event per allocation (+bytes) and free (-bytes), with its time
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: the profiler's C++ backend logs each start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def measure_step(step: Callable[[], None], timed_steps: int = 3, device: torch.device | None = None) -> tuple[int, float]:
    """(peak activation bytes, median seconds) of one training step; gradients allocated first."""
    step()  # warm-up: allocates gradients and optimizer state, which are not activations
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_allocated_during(step)
    times = []
    for _ in range(timed_steps):
        start = time.perf_counter()
        step()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return peak, statistics.median(times) if times else float("nan")


def profile_policies(model: nn.Module, make_step: Callable[[nn.Module], Callable[[], None]],
                     policies=POLICIES, k: int | None = None, timed_steps: int = 2,
                     device: torch.device | None = None) -> list[StepProfile]:
    """Measure one training step of ``model`` under each policy (weights restored after each)."""
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    results = []
    for policy in policies:
        apply_recompute(model, policy, k)
        peak, seconds = measure_step(make_step(model), timed_steps, device)
        results.append(StepProfile(policy, peak, seconds))
        model.load_state_dict(state)
    apply_recompute(model, "none")
    return results


def choose(profiles: list[StepProfile], max_bytes: int) -> StepProfile:
    """The fastest policy whose peak fits ``max_bytes``; fail clearly if none does."""
    fitting = [p for p in profiles if p.peak_bytes <= max_bytes]
    if not fitting:
        smallest = min(profiles, key=lambda p: p.peak_bytes)
        raise BertkitError(
            f"no recompute policy fits in {format_bytes(max_bytes)} at this batch size; the smallest, "
            f"{smallest.policy}, needs {format_bytes(smallest.peak_bytes)}: lower --batch-size or --max-length"
        )
    return min(fitting, key=lambda p: p.seconds)


def parse_size(text: str) -> int:
    """'900M', '2GiB', '1.5G', '123456' → bytes (binary units)."""
    units = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().replace("IB", "").rstrip("B") if text.strip().upper() not in ("", "B") else text
    number = t.rstrip("KMGT")
    unit = t[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise BertkitError(f"cannot read memory size {text!r} (e.g. 900M, 2G, 1.5GiB)") from None
    if unit not in units or value <= 0:
        raise BertkitError(f"cannot read memory size {text!r} (e.g. 900M, 2G, 1.5GiB)")
    return int(value * units[unit])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ---------------------------------------------------------------- wiring into training commands


@dataclass
class RecomputeOptions:
    policy: str = "none"  # one of POLICIES, or "auto"
    every_k: int | None = None
    max_memory: str | None = None  # e.g. "900M": activation budget for auto / find-batch-size
    find_batch_size: bool = False


def _worst_case_step(task, examples, batch_size: int, device: torch.device) -> Callable[[nn.Module], Callable[[], None]]:
    """A training step on the ``batch_size`` longest examples: the peak a real epoch will meet."""
    longest = sorted(examples, key=task.length, reverse=True)[:batch_size]
    batch = {k: v.to(device) for k, v in task.collate(longest, torch.Generator().manual_seed(0)).items()}

    def make_step(model):
        def step():
            out = model(**batch)
            (out if isinstance(out, torch.Tensor) else out.loss).backward()
            model.zero_grad(set_to_none=False)

        return step

    return make_step


def _print_table(profiles: list[StepProfile], budget: int | None, chosen: str | None) -> None:
    from rich.table import Table

    from .progress import console

    base = next((p for p in profiles if p.policy == "none"), profiles[0])
    table = Table(title="recompute policies: one training step", title_justify="left")
    for column in ("policy", "peak activations", "memory ratio", "step time", "time ratio", "fits"):
        table.add_column(column, justify="left" if column == "policy" else "right", no_wrap=True)
    for p in profiles:
        fits = "-" if budget is None else ("yes" if p.peak_bytes <= budget else "no")
        table.add_row(p.policy, format_bytes(p.peak_bytes), f"{base.peak_bytes / max(p.peak_bytes, 1):.2f}x",
                      f"{p.seconds:.3f}s", f"{p.seconds / base.seconds:.3f}", fits,
                      style="bold green" if p.policy == chosen else None)
    console.print(table)


def largest_batch(task, examples, budget: int, start: int, device: torch.device) -> int:
    """Largest batch size whose worst-case step stays within ``budget`` bytes (doubling, then bisection)."""

    def fits(size: int) -> bool:
        peak, _ = measure_step(_worst_case_step(task, examples, size, device)(task.model), timed_steps=0, device=device)
        return peak <= budget

    limit = len(examples)
    if not fits(1):
        raise BertkitError(f"even a batch of 1 needs more than {format_bytes(budget)} of activations")
    low, high = 1, None
    size = max(1, min(start, limit))
    while high is None:
        if fits(size):
            low = size
            if size >= limit:
                return limit
            size = min(size * 2, limit)
        else:
            high = size
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def setup_recompute(task, examples, cfg, opts: RecomputeOptions) -> str:
    """Apply the policy (profiling every policy first for ``auto``); may set ``cfg.batch_size``."""
    from .progress import log
    from .trainer import default_device, world

    rank, world_size = world()
    policy = opts.policy
    if policy != "none" and policy != "auto" and policy not in POLICIES:
        plan(policy, 1)  # raises the clear error
    budget = parse_size(opts.max_memory) if opts.max_memory else None
    if (policy == "auto" or opts.find_batch_size) and budget is None:
        raise BertkitError("--recompute auto and --find-batch-size need --max-memory SIZE (e.g. 2G)")
    if opts.find_batch_size and cfg.resume:
        raise BertkitError("--find-batch-size cannot be used with --resume: pass the run's --batch-size")
    device = default_device()
    task.model.to(device)
    if policy == "auto":
        make_step = _worst_case_step(task, examples, cfg.batch_size, device)
        profiles = profile_policies(task.model, make_step, k=opts.every_k, timed_steps=3, device=device)
        chosen = choose(profiles, budget)
        if rank == 0:
            _print_table(profiles, budget, chosen.policy)
        policy = _from_rank0(chosen.policy, world_size)  # timings differ a little between ranks
    apply_recompute(task.model, policy, opts.every_k)
    if opts.find_batch_size:
        cfg.batch_size = _from_rank0(largest_batch(task, examples, budget, cfg.batch_size, device), world_size)
        log(f"--find-batch-size: {cfg.batch_size} examples per batch fit in {format_bytes(budget)} with {policy}", rank)
    if opts.policy != "none":
        log(f"activation recomputation: {policy}", rank)
    cfg.extra["recompute"] = policy
    return policy


def _from_rank0(value, world_size: int):
    """Every rank takes rank 0's decision, so all run the same policy and batch size."""
    if world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
