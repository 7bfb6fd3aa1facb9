"""Activation recomputation for BERT encoders: less memory for a little more time.

Policies (``--recompute``):
- ``full`` -- Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost", sections 3-4:
  keep only each encoder layer's input during the forward pass and recompute the layer when the
  backward pass reaches it.  As the paper notes, the last segment need not be recomputed (its
  activations are consumed at once by the backward pass), so the last layer is left
  un-checkpointed: 1/n less recomputation at the same peak memory.
- ``every-k`` -- Chen et al.'s O(sqrt n) schedule: segments of k layers, k = ceil(sqrt(n)) by
  default; fewer stored boundaries, but k layers' activations alive while one segment is
  recomputed, which for transformer layers (large insides, small boundaries) costs memory.
- ``selective`` -- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", section 5: keep every matmul output, recompute only what is large but
  cheap: the attention core (QK^T, softmax, dropout masks, x V) and the GELU output.
- ``ffn-keep`` -- ours, between the two: ``full``, except that the output of each layer's second
  feed-forward matmul is saved (a selective checkpoint context).  That matmul is 4/13 of a
  BERT-base layer's forward FLOPs at sequence 512, and its output one hidden-sized tensor per
  token: ~30% less recomputation for one more boundary's worth of memory.
- ``ffn2-keep`` -- the same, keeping both feed-forward matmul outputs (8/13 of the FLOPs for
  five hidden-sized tensors per token): recomputes only the attention block and elementwise ops.
- ``auto`` -- profile one step of each on the user's model, batch and sequence length, take
  the fastest that fits ``--max-memory`` (see :func:`setup_recompute`).

Per-sample attention (``per_sample_attention``, a switch of its own, on by default with every
policy but ``none``): the attention core runs sample by sample under its own checkpoint
(:func:`chunked_sdpa_attention`).  With dropout on the CPU, SDPA falls back to a math kernel that
keeps several batch x heads x T x T tensors per layer for the backward pass; recomputing them one
sample at a time cuts that by the batch size.  This is a deviation from the papers, which assume
fused GPU attention kernels; on a GPU, flash and memory-efficient SDPA keep no T x T tensors and
the switch saves nothing.  It is independent of the policy: Hugging Face's own layer
checkpointing with it saves as much as ``full`` with it (``examples/benchmarks/recompute.py``
measures every policy with and without it).

All checkpoints are non-reentrant ``torch.utils.checkpoint`` with the RNG state preserved, so
dropout masks in the recomputation equal the original ones and gradients equal those without
recomputation (tested).  Non-reentrant checkpointing also gives correct gradients when the
inputs do not require grad (frozen embeddings, where the reentrant variant silently returns None
gradients) and works under DDP and autocast.

Peak memory on CPU: torch has no ``max_memory_allocated`` for the CPU allocator, so
:func:`peak_allocated_during` records the profiler's memory events (every allocation and free
torch makes during the step, in order) and takes the peak of their running sum.  Gradients are
allocated by a warm-up step before measuring, so the figure is what forward and backward add on
top of weights, gradients and optimizer state: activations and their temporaries, the same
quantity as ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the step on a
GPU (which :func:`measure_step` uses there).
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
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from ..core.device import default_device
from ..core.errors import BertkitError
from ..core.progress import console, log
from .distributed import from_rank0, world

POLICIES = ("none", "full", "ffn-keep", "ffn2-keep", "selective", "every-k")
MATMUL_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    mode: str  # "keep" (no checkpoint), "full", "ffn-keep", "ffn2-keep"


def plan(policy: str, n_layers: int, k: int | None = None) -> list[Segment]:
    """Split ``n_layers`` into checkpointed segments; the last layer is never recomputed."""
    if policy not in POLICIES:
        raise BertkitError(f"unknown recompute policy {policy!r} (choose from {', '.join(POLICIES)}, auto)")
    if policy in ("none", "selective") or n_layers == 0:  # selective works inside each layer
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


def _save_ffn_matmuls(intermediate_size: int, both: bool):
    """SAC policy: keep the FFN output matmul's result (and with ``both`` the FFN input matmul's).

    They are recognised by shape: the FFN's first matmul produces, and its second consumes,
    ``intermediate_size`` columns; no other matmul of a BERT layer does.
    """

    def policy(ctx, op, *args, **kwargs):
        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            left, right = (args[1], args[2]) if op is torch.ops.aten.addmm.default else (args[0], args[1])
            if left.shape[-1] == intermediate_size or (both and right.shape[-1] == intermediate_size):
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _save_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in MATMUL_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _context_fn(mode: str, intermediate_size: int) -> Callable | None:
    if mode in ("ffn-keep", "ffn2-keep"):
        policy = _save_ffn_matmuls(intermediate_size, both=mode == "ffn2-keep")
        return functools.partial(create_selective_checkpoint_contexts, policy)
    return None


# ---------------------------------------------------------------- GELU output, recomputed


def _intermediate_without_activation(self, hidden_states):
    return self.dense(hidden_states)


def _output_recomputing_activation(self, pre_activation, input_tensor):
    """FFN output block that recomputes GELU(pre_activation) in the backward pass.

    The FFN keeps two 4 x hidden tensors per token for the backward pass: the first matmul's
    output (GELU's input) and GELU's output (the second matmul's input).  Here only the first is
    kept; GELU is re-run when the second matmul's weight gradient needs it, and the matmul
    output itself is saved (not recomputed) by a selective checkpoint context.
    """
    act = self._bertkit_act

    def project(x):
        return self.dense(act(x))

    if torch.is_grad_enabled() and self.training:
        context = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)
        hidden = checkpoint(project, pre_activation, use_reentrant=False, context_fn=context)
    else:
        hidden = project(pre_activation)
    return self.LayerNorm(self.dropout(hidden) + input_tensor)


def _recompute_activation(encoder: nn.Module, on: bool) -> None:
    for layer in encoder.layer:
        intermediate, output = layer.intermediate, layer.output
        if on:
            output._bertkit_act = intermediate.intermediate_act_fn
            intermediate.forward = types.MethodType(_intermediate_without_activation, intermediate)
            output.forward = types.MethodType(_output_recomputing_activation, output)
        else:
            intermediate.__dict__.pop("forward", None)
            output.__dict__.pop("forward", None)


# ---------------------------------------------------------------- attention core, recomputed per sample

CHUNKED_ATTENTION = "bertkit_chunked_sdpa"


def chunked_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA whose core (QK^T, softmax, dropout, xV) is checkpointed one sample at a time.

    On the CPU, attention dropout forces SDPA onto its math kernel, which keeps several
    batch x heads x T x T tensors per layer for the backward pass: at sequence 512 they are most of
    a BERT layer's activations.  Checkpointing the core sample by sample keeps only Q, K, V and
    recomputes one sample's T x T tensors at a time in the backward pass (Korthikanti et al.'s
    selective recomputation, with the transient cut by the batch size).  The CPU generator draws
    dropout masks in memory order, so per-sample masks equal the whole-batch masks and gradients
    match plain SDPA exactly.  Elsewhere (no dropout, eval, GPU kernels that never build T x T
    tensors) it is plain SDPA.
    """
    chunked = module.training and dropout > 0 and query.device.type == "cpu" and query.shape[0] > 1
    if not chunked or not torch.is_grad_enabled():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    def core(q, k, v, mask):
        return sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling, **kwargs)[0]

    outputs = []
    for i in range(query.shape[0]):
        mask = attention_mask[i : i + 1] if attention_mask is not None and attention_mask.shape[0] > 1 else attention_mask
        outputs.append(checkpoint(core, query[i : i + 1], key[i : i + 1], value[i : i + 1], mask,
                                  use_reentrant=False, preserve_rng_state=True))
    return torch.cat(outputs), None


AttentionInterface.register(CHUNKED_ATTENTION, chunked_sdpa_attention)
AttentionMaskInterface.register(CHUNKED_ATTENTION, sdpa_mask)


def _use_chunked_attention(config, on: bool) -> None:
    if on and config._attn_implementation in ("sdpa", CHUNKED_ATTENTION):  # eager attention stays eager
        config._attn_implementation = CHUNKED_ATTENTION
    elif not on and config._attn_implementation == CHUNKED_ATTENTION:
        config._attn_implementation = "sdpa"


def find_encoder(model: nn.Module) -> nn.Module:
    """The module holding the stack of transformer layers (``.layer``, a ModuleList)."""
    for module in model.modules():
        if isinstance(getattr(module, "layer", None), nn.ModuleList) and hasattr(module, "config"):
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
                # call the module, not .forward: transformers collects output_hidden_states with
                # hooks on each layer, so per-layer outputs stay visible under recomputation
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


def apply_recompute(model: nn.Module, policy: str, k: int | None = None,
                    per_sample_attention: bool | None = None) -> list[Segment]:
    """Make ``model``'s encoder recompute activations by ``policy``; returns the segment plan.

    ``per_sample_attention`` checkpoints the attention core one sample at a time
    (:func:`chunked_sdpa_attention`), a separate switch that can go with any policy, ``none``
    included; by default it is on with every policy but ``none``.  The weights and their names
    are untouched, so saving and loading are unaffected.
    """
    per_sample = policy != "none" if per_sample_attention is None else per_sample_attention
    if policy == "none" and not per_sample and not _patched(model):
        return plan("none", 0)  # nothing to undo; works for any architecture
    encoder = find_encoder(model)
    segments = plan(policy, len(encoder.layer), k)
    _use_chunked_attention(encoder.config, per_sample)
    _recompute_activation(encoder, policy == "selective")
    if policy == "none":
        encoder.__dict__.pop("forward", None)
        return segments
    encoder._bertkit_segments = segments
    encoder._bertkit_intermediate = encoder.config.intermediate_size
    encoder.forward = types.MethodType(_segmented_forward, encoder)
    return segments


def _patched(model: nn.Module) -> bool:
    """Whether an earlier apply_recompute left anything to undo."""
    if any("forward" in m.__dict__ for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == CHUNKED_ATTENTION


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
    if unit not in units or not math.isfinite(value) or value <= 0:
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
    per_sample_attention: bool | None = None  # None: on with every policy but none


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
    task.model.to(device).train()  # measure with dropout on, as training runs
    if policy == "auto":
        make_step = _worst_case_step(task, examples, cfg.batch_size, device)
        profiles = profile_policies(task.model, make_step, k=opts.every_k, timed_steps=3, device=device)
        chosen = choose(profiles, budget)
        if rank == 0:
            _print_table(profiles, budget, chosen.policy)
        policy = from_rank0(chosen.policy, world_size)  # timings differ a little between ranks
    apply_recompute(task.model, policy, opts.every_k, opts.per_sample_attention)
    if opts.find_batch_size:
        cfg.batch_size = from_rank0(largest_batch(task, examples, budget, cfg.batch_size, device), world_size)
        log(f"--find-batch-size: {cfg.batch_size} examples per batch fit in {format_bytes(budget)} with {policy}", rank)
    if opts.policy != "none":
        log(f"activation recomputation: {policy}", rank)
    cfg.extra["recompute"] = policy
    return policy

