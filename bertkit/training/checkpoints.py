"""Resumable checkpoints: weights (safetensors), optimizer and scheduler state with every rank's
RNG state (``torch.save``, read back with ``weights_only=True``), and the loop's state (JSON).
A checkpoint directory is swapped in whole, so a kill mid-write leaves the previous one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import BertkitError
from ..core.files import atomic_dir
from ..core.weights import load_weights, save_weights
from .distributed import gather


def all_rng_states(world_size: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (dropout differs per rank), gathered for rank 0 to save."""
    mine = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["cuda"] = torch.cuda.get_rng_state()
    return gather(mine, world_size)


def save_checkpoint(path: Path, model, optimizer, scheduler, state: dict, rng_states: list) -> None:
    with atomic_dir(path) as tmp:
        save_weights(model, tmp / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")


def save_model_weights(path: Path, model) -> None:
    """The weights alone (the best model so far), swapped in whole."""
    with atomic_dir(path) as tmp:
        save_weights(model, tmp / "model.safetensors")


def checkpoint_dir(path: Path) -> Path | None:
    """The complete checkpoint at ``path``, or the previous one if a kill hit mid-replacement."""
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "state.json").exists() and (candidate / "optimizer.pt").exists():
            return candidate
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int, world_size: int) -> dict:
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
