"""A module's weights (or the part of them under some name prefixes) as one safetensors file.

Used for training checkpoints and for the parts a technique adds beside a transformers backbone
(see :class:`bertkit.core.modelio.Manifest`).  Only safetensors: nothing here unpickles.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .files import replace_file


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_weights(model: nn.Module, path: Path, prefix: str | tuple[str, ...] = "", dtype: torch.dtype | None = None) -> None:
    """The state dict (the names starting with ``prefix``, or one of them) as safetensors, each tensor once,
    written atomically.

    Tied weights (one tensor under two names, e.g. BERT's decoder and word embeddings) are
    stored under their first name.  Parameters that are distinct views of one buffer (cuDNN
    packs a GRU's weights into one on the GPU, which safetensors refuses) are stored as copies.
    """
    tensors, seen = {}, set()
    for name, tensor in unwrap(model).state_dict().items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if name.startswith(prefix) and key not in seen:
            seen.add(key)
            tensors[name] = tensor.detach().to("cpu", dtype=dtype or tensor.dtype, copy=True).contiguous()
    save_tensors(tensors, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A dict of tensors as one safetensors file, written aside and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    replace_file(tmp, path)


def load_weights(model: nn.Module, path: Path, prefix: str | tuple[str, ...] = "",
                 optional: tuple[str, ...] = ()) -> None:
    """Loads what :func:`save_weights` wrote (with the same ``prefix``), in the model's dtypes.

    Every weight under ``prefix`` must be in the file, except one tied to a loaded weight or
    named in ``optional`` (a part added after the file was written keeps its initial value);
    the file must hold nothing the model lacks.  Raises ``ValueError`` otherwise.
    """
    module = unwrap(model)
    state = module.state_dict()
    tensors = {k: v.to(state[k].dtype) if k in state else v for k, v in load_file(str(path)).items()}
    _, unexpected = module.load_state_dict(tensors, strict=False)
    loaded = {(state[n].data_ptr(), tuple(state[n].shape)) for n in tensors if n in state}
    untied = [n for n in state if n.startswith(prefix) and n not in tensors and n not in optional
              and (state[n].data_ptr(), tuple(state[n].shape)) not in loaded]
    if unexpected or untied:
        raise ValueError(f"weights do not match the model: missing {untied[:3]}, unexpected {unexpected[:3]}")
