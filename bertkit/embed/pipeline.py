"""Saving and loading an embedding pipeline in the sentence-transformers layout.

The directory holds the encoder (Hugging Face files), ``modules.json`` and one folder per module
(``WeightedLayerPooling`` for the layer-averaging poolings, ``Pooling``, then ``Dense`` for
whitening or :class:`bertkit.embed.flow.SentenceFlow` for a flow), so ``SentenceTransformer(DIR)``
loads it; the manifest (``bertkit.json``, kind ``sentence-embedding``) names the pooling and the
transform's part, for bertkit to load the same pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..core import modelio
from ..core.errors import BertkitError
from ..core.files import read_json, write_json_atomic
from ..core.weights import save_tensors
from .flow import load_flow, save_flow
from .model import FlowTransform, PoolingSpec, Whitening, parse_pooling

ST_POOLING_MODES = {  # sentence-transformers Pooling config keys
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}


def save_pipeline(model, tokenizer, max_length: int, spec: PoolingSpec, transform, directory: Path) -> None:
    """The encoder, its pooling and the fitted transform, in a directory sentence-transformers loads."""
    directory = Path(directory)
    modelio.save_pretrained(model, tokenizer, directory)
    dim = model.config.hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    manifest = modelio.Manifest("sentence-embedding", config={"pooling": spec.name, "base_pooling": spec.base})

    def add_module(kind: str, type_name: str) -> Path:
        folder = f"{len(modules)}_{kind}"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": type_name})
        return directory / folder

    layer_base = spec.base in ("first-last-avg", "last2avg")
    if layer_base:  # average two layers token by token, then mean-pool
        n = model.config.num_hidden_layers
        start, weights = (1, [1] + [0] * (n - 2) + [1]) if spec.base == "first-last-avg" else (n - 1, [1, 1])
        folder = add_module("WeightedLayerPooling", "sentence_transformers.models.WeightedLayerPooling")
        write_json_atomic(folder / "config.json", {"word_embedding_dimension": dim, "num_hidden_layers": n, "layer_start": start})
        save_tensors({"layer_weights": torch.tensor(weights, dtype=torch.float32)}, folder / "model.safetensors")
    folder = add_module("Pooling", "sentence_transformers.models.Pooling")
    pooling_mode = "mean" if layer_base else spec.base
    write_json_atomic(folder / "config.json", {
        "word_embedding_dimension": dim,
        **{key: mode == pooling_mode for mode, key in ST_POOLING_MODES.items()},
        "include_prompt": True,
    })
    if isinstance(transform, FlowTransform):
        folder = add_module("SentenceFlow", "bertkit.embed.flow.SentenceFlow")
        save_flow(transform.flow, folder)
        manifest.parts["flow"] = folder.name
    elif transform is not None:
        folder = add_module("Dense", "sentence_transformers.models.Dense")
        weight, bias = transform.weight_bias()
        write_json_atomic(folder / "config.json", {
            "in_features": weight.shape[1], "out_features": weight.shape[0], "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity",
        })
        save_tensors({"linear.weight": weight.contiguous(), "linear.bias": bias.contiguous()}, folder / "model.safetensors")
        manifest.parts["whitening"] = f"{folder.name}/model.safetensors"
    write_json_atomic(directory / "modules.json", modules)
    write_json_atomic(directory / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    if layer_base:  # sentence-transformers reads all layers only if the config asks for them
        config = read_json(directory / "config.json")
        config["output_hidden_states"] = True
        write_json_atomic(directory / "config.json", config)
    manifest.save(directory)


def load_pipeline(directory: Path) -> tuple[PoolingSpec | None, Whitening | FlowTransform | None]:
    """The pooling and its fitted transform (whitening or flow) saved by :func:`save_pipeline`."""
    directory = Path(directory)
    manifest = modelio.Manifest.read(directory)
    if manifest.kind != "sentence-embedding":
        return None, None
    try:
        spec = parse_pooling(manifest.config["pooling"], manifest.config["base_pooling"])
    except (KeyError, TypeError):
        raise BertkitError(f"{manifest.source} is corrupt") from None
    if spec.flow:
        # directories written before the manifest name no part: their one flow module
        folder = manifest.parts.get("flow") or next((p.name for p in directory.glob("*_SentenceFlow")), None)
        if folder is None or not (directory / folder).is_dir():
            raise BertkitError(f"{directory} says flow but holds no flow module")
        return spec, FlowTransform(load_flow(directory / folder))
    if not spec.whiten:
        return spec, None
    dense = manifest.parts.get("whitening") or next((f"{p.parent.name}/{p.name}" for p in directory.glob("*_Dense/model.safetensors")), None)
    if dense is None or not (directory / dense).exists():
        raise BertkitError(f"{directory} says {spec.name} but holds no Dense module")
    try:
        tensors = load_file(str(directory / dense))
        weight, bias = tensors["linear.weight"].double().numpy(), tensors["linear.bias"].double().numpy()
    except Exception as exc:
        raise BertkitError(f"cannot load the whitening of {directory}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    matrix = weight.T
    mean = -np.linalg.lstsq(matrix.T, bias, rcond=None)[0]
    return spec, Whitening(mean, matrix)
