"""The one training loop every bertkit command uses.

A *task* (pretraining, classification, ...) supplies the model, how to turn examples into a
batch, how to evaluate and how to save a loadable model; this module owns everything else:
AdamW with warmup + linear decay, gradient accumulation, optional bf16 autocast, periodic
evaluation, best/last checkpoints written atomically, ``--resume``, seeding, the progress bar,
and DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on GPU).

Reproducibility contract: the data order of epoch ``e`` is a permutation drawn from
``seed + e``; the randomness a task uses to build the batch of step ``s`` (e.g. MLM masks) comes
from a generator seeded by ``(seed, s, micro-batch, rank)``; dropout uses the global torch RNG,
whose state is saved with each checkpoint.  A run killed after a checkpoint and resumed with
``resume=True`` therefore reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import BertkitError
from .progress import log, training_progress


@dataclass
class TrainConfig:
    """Hyper-parameters of the loop; ``batch_size`` is per process and per micro-batch."""

    output_dir: Path
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    bf16: bool = False
    eval_every: int = 0  # optimizer steps between evaluations; 0 = once per epoch
    save_every: int = 0  # optimizer steps between resumable checkpoints; 0 = at each evaluation
    seed: int = 42
    resume: bool = False
    metric: str | None = None  # key of evaluate()'s result to pick the best model (higher wins)
    log_every: int = 20
    max_minutes: float | None = None  # wall-clock budget of this run; stops early, resumable
    # parameter-name prefix -> multiple of ``lr``: freshly initialised parts beside a pretrained
    # encoder (e.g. the spelling corrector's detection GRU) learn at a higher rate
    lr_scale: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in trainer_state.json


class TrainTask(Protocol):
    """What a technique gives the loop.

    ``model(**batch)`` must return the loss (a tensor, or an object with ``.loss``).
    """

    model: nn.Module

    def collate(self, examples: Sequence[Any], generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def save(self, model: nn.Module, directory: Path) -> None: ...


# ---------------------------------------------------------------- distributed helpers


def world() -> tuple[int, int]:
    """(rank, world_size), initialising the process group the first time under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        # torn down before the interpreter's own exit, which otherwise can destroy gloo's threads
        # while they run ("terminate called without an active exception", SIGABRT)
        atexit.register(_leave_process_group)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def parameter_checksum(model: nn.Module) -> float:
    """A float that differs when any weight differs; used to prove DDP ranks agree."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(_unwrap(model).parameters())))


# ---------------------------------------------------------------- atomic files


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` directory to ``final``, never leaving a half-written one."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_weights(model: nn.Module, path: Path, prefix: str | tuple[str, ...] = "", dtype: torch.dtype | None = None) -> None:
    """The state dict (the names starting with ``prefix``, or one of them) as safetensors, each tensor once,
    written atomically.

    Tied weights (one tensor under two names, e.g. BERT's decoder and word embeddings) are
    stored under their first name.  Parameters that are distinct views of one buffer (cuDNN
    packs a GRU's weights into one on the GPU, which safetensors refuses) are stored as copies.
    """
    tensors, seen = {}, set()
    for name, tensor in _unwrap(model).state_dict().items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if name.startswith(prefix) and key not in seen:
            seen.add(key)
            tensors[name] = tensor.detach().to("cpu", dtype=dtype or tensor.dtype, copy=True).contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Loads what :func:`save_weights` wrote; a name left out must be tied to one that was loaded."""
    module = _unwrap(model)
    tensors = load_file(str(path))
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    state = module.state_dict()
    loaded = {(state[n].data_ptr(), tuple(state[n].shape)) for n in tensors if n in state}
    untied = [n for n in missing if (state[n].data_ptr(), tuple(state[n].shape)) not in loaded]
    if unexpected or untied:
        raise ValueError(f"weights do not match the model: missing {untied[:3]}, unexpected {unexpected[:3]}")


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights, as in the BERT recipe; the
    parameters under a ``cfg.lr_scale`` prefix get their own groups at that multiple of ``lr``."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in _unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        scale = next((f for prefix, f in cfg.lr_scale.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    # the same order every run, so a resumed optimizer state matches its groups; the base rate
    # first, as the progress bar reports the first group's rate
    order = sorted(groups, key=lambda g: (g[0] != 1.0, g[0], not g[1]))
    return torch.optim.AdamW([{"params": groups[g], "lr": cfg.lr * g[0], "weight_decay": cfg.weight_decay if g[1] else 0.0}
                              for g in order], lr=cfg.lr)


def warmup_linear(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _all_rng_states(world_size: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (dropout differs per rank), gathered for rank 0 to save."""
    mine = _rng_state()
    if world_size == 1:
        return [mine]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def _save_checkpoint(path: Path, model, optimizer, scheduler, state: dict, rng_states: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    replace_dir(tmp, path)


def checkpoint_dir(path: Path) -> Path | None:
    """The complete checkpoint at ``path``, or the previous one if a kill hit mid-replacement."""
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "state.json").exists() and (candidate / "optimizer.pt").exists():
            return candidate
    return None


def _load_checkpoint(path: Path, model, optimizer, scheduler, rank: int, world_size: int) -> dict:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        load_weights(model, path / "model.safetensors")
        blob = torch.load(path / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        rng = blob["rng"]
        if len(rng) != world_size:
            raise ValueError(f"it was written by {len(rng)} processes, this run has {world_size}")
        torch.set_rng_state(rng[rank]["cpu"])
        if "cuda" in rng[rank] and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng[rank]["cuda"])
    except Exception as exc:  # a corrupt or foreign checkpoint, whatever the library raises
        raise BertkitError(f"cannot resume from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return state


# ---------------------------------------------------------------- the loop


class Trainer:
    """Runs ``task`` over ``examples`` according to ``cfg``; see the module docstring."""

    def __init__(self, task: TrainTask, examples: Sequence[Any], cfg: TrainConfig):
        self.task, self.examples, self.cfg = task, examples, cfg
        for name in ("batch_size", "grad_accum"):
            if getattr(cfg, name) < 1:
                raise BertkitError(f"--{name.replace('_', '-')} must be at least 1")
        if cfg.lr <= 0:
            raise BertkitError("--lr must be positive")
        self.rank, self.world_size = world()
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        per_rank = len(examples) // self.world_size
        self.steps_per_epoch = per_rank // (cfg.batch_size * cfg.grad_accum)
        if self.steps_per_epoch == 0:
            need = cfg.batch_size * cfg.grad_accum * self.world_size
            raise BertkitError(f"{len(examples)} training examples are fewer than one step needs ({need}); lower --batch-size")
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)

    # -- data

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed + epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def _micro_batches(self, step: int, order: list[int]):
        cfg = self.cfg
        in_epoch = step % self.steps_per_epoch
        for micro in range(cfg.grad_accum):
            start = (in_epoch * cfg.grad_accum + micro) * cfg.batch_size
            idx = order[start : start + cfg.batch_size]
            seed = ((cfg.seed * 1_000_003 + step) * 97 + micro) * 131 + self.rank
            gen = torch.Generator().manual_seed(seed % (2**63))
            yield self.task.collate([self.examples[i] for i in idx], gen)

    # -- one step

    def _forward_loss(self, model, batch) -> torch.Tensor:
        ctx = torch.autocast(device_type=_device_type(model), dtype=torch.bfloat16) if self.cfg.bf16 else contextlib.nullcontext()
        with ctx:
            out = model(**batch)
        return out if isinstance(out, torch.Tensor) else out["loss"]  # HF outputs are dicts too

    def _step(self, model, optimizer, scheduler, step: int, order: list[int]) -> torch.Tensor:
        # the loss stays on the device: reading it would make the host wait for the GPU, which
        # could otherwise run this step while the host builds the next batch
        model.train()
        total = 0.0
        batches = list(self._micro_batches(step, order))
        device = _device(model)
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = i == len(batches) - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else model.no_sync():
                loss = self._forward_loss(model, batch) / len(batches)
                loss.backward()
            total = total + loss.detach()
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    # -- evaluation and saving

    def _evaluate(self, model) -> dict[str, float]:
        if self.rank != 0 or not hasattr(self.task, "evaluate"):
            return {}
        model.eval()
        with torch.inference_mode():
            return self.task.evaluate(_unwrap(model))

    def _is_better(self, metrics: dict, best: float | None) -> bool:
        key = self.cfg.metric
        if not key or key not in metrics:
            return False
        return best is None or metrics[key] > best

    def fit(self) -> dict:
        cfg, task = self.cfg, self.task
        torch.manual_seed(cfg.seed + self.rank)  # ranks must not share dropout masks
        model = task.model.to(default_device())
        if self.world_size > 1:
            device_ids = [_device(model).index] if torch.cuda.is_available() else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        optimizer = build_optimizer(model, cfg)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(self.total_steps, warmup))

        state = {"step": 0, "best_metric": None, "best_step": None, "history": []}
        last = self.ckpt_dir / "last"
        found = checkpoint_dir(last)  # every rank checks, so every rank fails alike
        if cfg.resume:
            if found is None:
                raise BertkitError(f"--resume: no checkpoint in {last}")
            state = _load_checkpoint(found, model, optimizer, scheduler, self.rank, self.world_size)
            log(f"resumed from {found} at step {state['step']}", rank=self.rank)
        elif found is not None or (self.out / "trainer_state.json").exists():
            raise BertkitError(f"{self.out} already holds a training run; pass --resume to continue it or pick a new -o")
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)

        eval_every = cfg.eval_every or self.steps_per_epoch
        save_every = cfg.save_every or eval_every
        start = time.time()
        with training_progress(self.total_steps, state["step"], enabled=self.rank == 0) as bar:
            order, order_epoch = None, -1
            running = []
            while state["step"] < self.total_steps:
                step = state["step"]
                epoch = step // self.steps_per_epoch
                if epoch != order_epoch:
                    order, order_epoch = self._epoch_order(epoch), epoch
                loss = self._step(model, optimizer, scheduler, step, order)
                running.append(loss)
                state["step"] = step + 1
                bar.advance(loss, scheduler.get_last_lr()[0])
                done = state["step"] == self.total_steps or self._out_of_time(start, model)
                if state["step"] % eval_every == 0 or done:
                    metrics = self._evaluate(model)
                    metrics["train_loss"] = float(sum(running)) / len(running)
                    running = []
                    state["history"].append({"step": state["step"], **metrics})
                    bar.report(state["step"], metrics)
                    if self.rank == 0 and self._is_better(metrics, state["best_metric"]):
                        state["best_metric"], state["best_step"] = metrics[cfg.metric], state["step"]
                        self._save_model(model, self.ckpt_dir / "best")
                if state["step"] % save_every == 0 or done:
                    rng_states = _all_rng_states(self.world_size)
                    if self.rank == 0:
                        _save_checkpoint(last, model, optimizer, scheduler, state, rng_states)
                _barrier()
                if done:
                    break
        if state["step"] < self.total_steps:
            log(f"stopped at step {state['step']} of {self.total_steps}: --max-minutes reached; --resume continues", rank=self.rank)
        return self._finish(model, state, time.time() - start)

    def _out_of_time(self, start: float, model) -> bool:
        if not self.cfg.max_minutes:
            return False
        over = time.time() - start >= self.cfg.max_minutes * 60
        if self.world_size == 1:
            return over
        flag = torch.tensor([float(over)], device=_device(model))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # ranks' clocks differ: all stop at the same step
        return bool(flag.item())

    def _save_model(self, model, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_weights(model, tmp / "model.safetensors")
        replace_dir(tmp, path)

    def _finish(self, model, state: dict, seconds: float) -> dict:
        checksums = [parameter_checksum(model)]
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, checksums[0])
            checksums = gathered
        if self.rank == 0:
            best = self.ckpt_dir / "best"
            if best.exists():  # the final model is the best one seen on dev
                load_weights(model, best / "model.safetensors")
            self.task.save(_unwrap(model), self.out)
            summary = {
                **{k: v for k, v in state.items() if k != "history"},
                "total_steps": self.total_steps,
                "train_seconds_this_run": round(seconds, 1),
                "world_size": self.world_size,
                "rank_checksums": checksums,
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
                "history": state["history"],
            }
            write_json_atomic(self.out / "trainer_state.json", summary)
        _barrier()
        return state


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _device_type(model: nn.Module) -> str:
    return _device(model).type


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
