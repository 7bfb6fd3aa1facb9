"""A compressed classifier as a bertkit model directory, and the architecture that builds it back.

:func:`save_compressed` writes the model the stages left in memory; ``bertkit.json`` says
``kind: classifier`` (so ``bertkit predict`` / ``eval`` load it like any classifier) and records,
under ``config.compression``, the stages applied (their records, in order) and whether the
directory is still in the Hugging Face format:

- Vocabulary pruning alone keeps it: ``config.json`` has the new ``vocab_size``, and
  ``AutoModelForSequenceClassification`` loads the directory as it is (architecture
  ``transformers``).
- Any other stage leaves it (architecture ``bertkit-compressed``; ``why_not_huggingface`` lists
  the reasons): layers with different head counts and FFN widths, int8 Linear layers, 8-bit
  embedding tables, a factorised word table (``X.table`` + ``X.project``), weights stored as
  bitmask + values.  ``config.json`` is then the BERT config
  of the model before structured pruning (the head width comes from it) with ``model_type``
  ``bertkit-compressed``, so that transformers refuses the directory instead of loading it with
  random weights; :func:`build`, registered with :func:`bertkit.core.modelio.register_architecture`,
  makes the model from data alone: no code comes from the directory.

``model.safetensors`` then holds every tensor under its state-dict name, except that
- an int8 Linear ``X`` is ``X.weight_int8`` (codes) + ``X.weight_scale`` (one float32 per row) + ``X.bias``;
- an 8-bit embedding table ``X`` is its buffers ``X.codes`` + ``X.scale``;
- a tensor of two or more dimensions that is smaller as bitmask + values (sparse) is stored as
  ``NAME.sparse_mask`` + ``NAME.sparse_values`` + ``NAME.sparse_shape`` (:func:`.sparse.pack`).
Loading gives the same weights back (int8 Linears from the same codes and scales), run by the lean
inference forward of :mod:`.inference` (query, key and value stacked into one product of the
same codes, the small embedding tables decoded once), hence the same logits as the model that
was saved, bit for bit (tested).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, BertModel

from ..core import modelio
from ..core.errors import BertkitError
from ..core.files import atomic_dir, read_json, write_json_atomic
from ..core.weights import save_tensors
from .factorize import FactorizedEmbedding
from .inference import for_inference
from .quantize import FORMATS, QuantizedEmbedding, int8_linear, is_int8_linear, linear_codes
from .sparse import pack, unpack, worth_packing
from .structured import layer_shapes, set_layer_shapes

ARCHITECTURE = "bertkit-compressed"
SPARSE = (".sparse_mask", ".sparse_values", ".sparse_shape")
CLASSIFIER_CLASSES = (AutoModelForSequenceClassification, BertForSequenceClassification)
BACKBONE_CLASSES = (AutoModel, BertModel)


# ---------------------------------------------------------------- save


def save_compressed(model: nn.Module, tokenizer, directory: Path | str, stages: list[dict],
                    students: nn.ModuleList | None = None, speed: float | None = None) -> Path:
    """Write ``model`` (a BERT classifier after any of the stages) with ``tokenizer`` to
    ``directory`` (replaced as a whole, atomically); ``stages``: the stages' records, in order.
    With early-exit ``students`` (the exit stage): they go to ``students.safetensors`` (float16)
    and the manifest says ``kind: early-exit-classifier`` with the exit ``speed``, as `bertkit
    distill` writes its models, so `bertkit predict` / `eval` run the exits."""
    if not isinstance(model, BertForSequenceClassification):
        raise BertkitError("bertkit compresses fine-tuned BERT classifiers (BertForSequenceClassification) only")
    if modelio.is_inference_only(model):
        raise BertkitError("this model was loaded from a compressed directory for inference and is not saved again: "
                           "compress the fine-tuned model instead")
    directory = Path(directory)
    tensors, spec = _encode(model)
    spec = {"stages": list(stages), **spec}
    config = {"compression": spec}
    kind = "classifier"
    if students is not None:
        from ..distill.runner import KIND, PART, student_shape

        kind, config = KIND, {**config, "speed": speed or 0.0, "student": student_shape(students)}
    manifest = modelio.Manifest(kind, config=config)
    with atomic_dir(directory) as tmp:
        if spec["huggingface_format"]:
            modelio.save_pretrained(model, tokenizer, tmp)
        else:
            model_config = model.config.to_dict()
            model_config.update(model_type=ARCHITECTURE, architectures=[type(model).__name__])
            write_json_atomic(tmp / "config.json", model_config)
            tokenizer.save_pretrained(tmp)
            save_tensors(tensors, tmp / "model.safetensors")
            manifest.architecture = ARCHITECTURE
        if students is not None:
            holder = nn.Module()
            holder.students = students
            modelio.save_part(holder, tmp, manifest, PART, prefix="students.", dtype=torch.float16)
        manifest.save(tmp)
    return directory


def _encode(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors to store (encoded) and what the builder needs to know about them."""
    tensors, int8, embeddings, factorized = {}, [], {}, {}
    quantized_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in quantized_prefixes):
            continue  # the packed parameters inside an int8 Linear
        prefix = f"{name}." if name else ""
        if is_int8_linear(module):
            codes, scale, bias = linear_codes(module)
            tensors[prefix + "weight_int8"], tensors[prefix + "weight_scale"] = codes, scale
            if bias is not None:
                tensors[prefix + "bias"] = bias
            int8.append(name)
            quantized_prefixes.append(name)
            continue
        if isinstance(module, QuantizedEmbedding):
            embeddings[name] = module.fmt
        if isinstance(module, FactorizedEmbedding):
            factorized[name] = module.rank
        for key, tensor in module.named_parameters(recurse=False):
            tensors[prefix + key] = tensor
        for key, tensor in module.named_buffers(recurse=False):
            if key not in module._non_persistent_buffers_set:
                tensors[prefix + key] = tensor
    stored, packed = {}, []
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous().clone()
        if tensor.dim() >= 2 and worth_packing(tensor):
            parts = pack(tensor)
            for suffix, part in zip(SPARSE, (parts["mask"], parts["values"], parts["shape"])):
                stored[key + suffix] = part
            packed.append(key)
        else:
            stored[key] = tensor
    shapes = layer_shapes(model)
    config = model.config
    reshaped = (any(h != config.num_attention_heads for h in shapes["heads"])
                or any(w != config.intermediate_size for w in shapes["intermediate"]))
    why = [reason for reason, applies in (("layers with their own head counts and FFN widths", reshaped),
                                           ("int8 Linear layers", bool(int8)),
                                           ("8-bit embedding tables", bool(embeddings)),
                                           ("factorised word embeddings", bool(factorized)),
                                           ("weights stored as bitmask + values", bool(packed))) if applies]
    spec = {"huggingface_format": not why, "why_not_huggingface": why, **shapes,
            "int8_linear": int8, "embeddings": embeddings, "factorized": factorized, "sparse": packed}
    return stored, spec


# ---------------------------------------------------------------- load


def load_compressed(directory: Path | str):
    """(model, tokenizer) from a directory :func:`save_compressed` wrote (either format)."""
    path = modelio.resolve_model(str(directory))
    model = modelio.load_model(path, AutoModelForSequenceClassification, dtype=torch.float32)
    return model.eval(), modelio.load_tokenizer(path)


@modelio.register_architecture(ARCHITECTURE)
def build(directory: Path, cls, **kwargs) -> nn.Module:
    """The compressed classifier in ``directory`` (or its BERT backbone, for ``AutoModel``)."""
    directory = Path(directory)
    dtype = kwargs.pop("dtype", None)
    if dtype not in (None, torch.float32) or kwargs:
        raise BertkitError(f"{directory} is a compressed model: it loads as it was saved (float32, its own "
                           "labels); fine-tune the uncompressed model instead")
    if cls not in CLASSIFIER_CLASSES + BACKBONE_CLASSES:
        raise BertkitError(f"{directory} holds a compressed classifier, not a {getattr(cls, '__name__', cls)}")
    spec = _spec(directory)
    config_data = read_json(directory / "config.json")
    config_data.pop("model_type", None)
    model = BertForSequenceClassification(BertConfig.from_dict(config_data))
    set_layer_shapes(model, spec["heads"], spec["intermediate"])
    for name, rank in spec["factorized"].items():  # before the 8-bit tables: those may be inside
        old = model.get_submodule(name)
        _set_module(model, name, FactorizedEmbedding(old.num_embeddings, rank, old.embedding_dim, old.padding_idx))
    for name, fmt in spec["embeddings"].items():
        old = model.get_submodule(name)
        _set_module(model, name, QuantizedEmbedding(old.num_embeddings, old.embedding_dim, fmt))
    tensors = _decode(load_file(str(directory / "model.safetensors")))
    int8 = {}
    for name in spec["int8_linear"]:
        try:
            codes, scale = tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.weight_scale")
        except KeyError:
            raise ValueError(f"the int8 weights of {name} are missing") from None
        int8[name] = (codes, scale, tensors.get(f"{name}.bias"))
        tensors[f"{name}.weight"] = codes.to(torch.float32) * scale[:, None]  # the float skeleton's weight
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not match the recorded shapes: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, (codes, scale, bias) in int8.items():
        _set_module(model, name, int8_linear(codes, scale, bias))
    for_inference(model)  # the same arithmetic in fewer operations (.inference)
    return model if cls in CLASSIFIER_CLASSES else model.bert


def _spec(directory: Path) -> dict:
    manifest = modelio.Manifest.read(directory)
    spec = manifest.config.get("compression")
    try:
        heads, widths = [int(h) for h in spec["heads"]], [int(w) for w in spec["intermediate"]]
        names = [str(n) for n in spec["int8_linear"]]
        embeddings = {str(k): str(v) for k, v in spec["embeddings"].items()}
        factorized = {str(k): int(v) for k, v in spec.get("factorized", {}).items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        raise BertkitError(f"{directory}: {modelio.MANIFEST} does not record the compressed model's shapes") from None
    if manifest.kind not in ("classifier", "early-exit-classifier") or any(fmt not in FORMATS for fmt in embeddings.values()):
        raise BertkitError(f"{directory}: {modelio.MANIFEST} records a compressed model this bertkit cannot build")
    return {"heads": heads, "intermediate": widths, "int8_linear": names, "embeddings": embeddings,
            "factorized": factorized}


def _decode(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors :func:`_encode` stored, the sparse ones dense again."""
    tensors = {k: v for k, v in stored.items() if not k.endswith(SPARSE)}
    sparse = {k.rsplit(".", 1)[0] for k in stored if k.endswith(SPARSE)}
    for key in sorted(sparse):
        if not all(key + suffix in stored for suffix in SPARSE):
            raise ValueError(f"the sparse form of {key} is incomplete")
        tensors[key] = unpack(*(stored[key + suffix] for suffix in SPARSE))
    return tensors


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ---------------------------------------------------------------- what the table reports


def parameter_count(model: nn.Module, nonzero: bool = False) -> int:
    """The model's weights, counted as stored: float parameters, the codes of 8-bit embedding
    tables and int8 Linear layers (``nonzero``: only the entries that are not 0)."""
    count = 0

    def add(tensor: torch.Tensor) -> None:
        nonlocal count
        if not nonzero:
            count += tensor.numel()
        else:  # fp8 has no comparison kernels: read its bits
            bits = tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor
            count += int((bits != 0).sum())

    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in skip):
            continue
        if is_int8_linear(module):
            codes, _, bias = linear_codes(module)
            add(codes)
            if bias is not None:
                add(bias)
            skip.append(name)
            continue
        for tensor in module.parameters(recurse=False):
            add(tensor.detach())
        if isinstance(module, QuantizedEmbedding):
            add(module.codes)
    return count


def size_on_disk(directory: Path | str) -> dict[str, int]:
    """Bytes of a model directory: its weights (``*.safetensors``) and all its files."""
    files = [p for p in Path(directory).rglob("*") if p.is_file()]
    return {"weights": sum(p.stat().st_size for p in files if p.suffix == ".safetensors"),
            "total": sum(p.stat().st_size for p in files)}
