"""Sentence embeddings from a BERT encoder: poolings, whitening, evaluation on STS pairs.

Poolings (``--pooling``), over the tokens the attention mask keeps, [CLS] and [SEP] included as
sentence-transformers does:
- ``cls``: the last layer's [CLS] vector (Devlin et al. 2019);
- ``mean``, ``max``, ``mean_sqrt_len`` (sum / sqrt(length)): of the last layer, as in
  sentence-transformers' Pooling;
- ``first-last-avg``: mean over tokens of the average of the first transformer layer's and the
  last layer's outputs (BERT-flow, Li et al. EMNLP 2020, section 5 and its released code);
- ``last2avg``: the same with the last two layers;
- ``whitening`` / ``whitening-K``: BERT-whitening (Su et al. 2021, section 3): a base pooling
  (``--base-pooling``, first-last-avg by default as in the paper), then x -> (x - mu) W with
  W = U diag(1/sqrt(s)) from the SVD of the covariance, keeping the first K columns for
  ``whitening-K``.  Fitted on unlabelled text with ``--fit`` and saved in the model directory as
  a sentence-transformers ``Dense`` module, so sentence-transformers loads the whole pipeline.

Texts longer than the model's limit are split into windows of whole tokens; each window is
pooled and the windows are combined (token-weighted mean for the mean-type poolings, elementwise
max for ``max``, mean of the windows' [CLS] vectors for ``cls``), never cut.

- ``flow``: BERT-flow (Li et al. 2020, section 4): a Glow trained by maximum likelihood on the
  frozen encoder's pooled vectors (``--base-pooling``) maps them to an isotropic Gaussian; the
  latent is the embedding (see :mod:`bertkit.flow`).  Fitted with ``--fit`` like whitening.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from transformers import AutoModel

from . import modelio
from .encoding import TextEncoder
from .errors import BertkitError
from .metrics import spearman
from .textio import map_in_order

BASE_POOLINGS = ("cls", "mean", "max", "mean_sqrt_len", "first-last-avg", "last2avg")
ST_POOLING_MODES = {  # sentence-transformers Pooling config keys
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}


@dataclass(frozen=True)
class PoolingSpec:
    base: str  # one of BASE_POOLINGS
    whiten: bool = False
    keep: int | None = None  # dimensions kept by whitening-K
    flow: bool = False

    @property
    def fitted(self) -> bool:
        return self.whiten or self.flow

    @property
    def name(self) -> str:
        if self.flow:
            return "flow"
        if not self.whiten:
            return self.base
        return f"whitening-{self.keep}" if self.keep else "whitening"


def parse_pooling(name: str, base: str = "first-last-avg") -> PoolingSpec:
    if name in BASE_POOLINGS:
        return PoolingSpec(name)
    if name == "flow" or name == "whitening" or name.startswith("whitening-"):
        if base not in BASE_POOLINGS:
            raise BertkitError(f"unknown --base-pooling {base!r} ({', '.join(BASE_POOLINGS)})")
        if name == "flow":
            return PoolingSpec(base, flow=True)
        keep = None
        if name != "whitening":
            try:
                keep = int(name.split("-", 1)[1])
            except ValueError:
                raise BertkitError(f"--pooling {name}: expected whitening-K with K a whole number") from None
            if keep < 1:
                raise BertkitError("whitening-K needs K >= 1")
        return PoolingSpec(base, True, keep)
    raise BertkitError(f"unknown pooling {name!r}: choose from {', '.join(BASE_POOLINGS)}, whitening, whitening-K, flow")


# ---------------------------------------------------------------- pooling one batch of windows


def pool_windows(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor, base: str) -> torch.Tensor:
    """Pool each window of a batch: returns (windows, hidden)."""
    m = mask.unsqueeze(-1).to(hidden_states[-1].dtype)
    if base == "cls":
        return hidden_states[-1][:, 0]
    if base == "max":
        return hidden_states[-1].masked_fill(m == 0, float("-inf")).max(1).values
    if base == "first-last-avg":
        tokens = (hidden_states[1] + hidden_states[-1]) / 2
    elif base == "last2avg":
        tokens = (hidden_states[-2] + hidden_states[-1]) / 2
    else:
        tokens = hidden_states[-1]
    summed = (tokens * m).sum(1)
    count = m.sum(1).clamp(min=1)
    return summed / (count.sqrt() if base == "mean_sqrt_len" else count)


def combine_windows(vectors: torch.Tensor, lengths: Sequence[int], base: str) -> torch.Tensor:
    """One vector from a text's windows (see the module docstring)."""
    if len(lengths) == 1:
        return vectors[0]
    if base == "max":
        return vectors.max(0).values
    if base == "cls":
        return vectors.mean(0)
    weights = torch.tensor(lengths, dtype=vectors.dtype).unsqueeze(1)
    if base == "mean_sqrt_len":  # undo each window's sqrt, sum, divide by sqrt of the total
        return (vectors * weights.sqrt()).sum(0) / math.sqrt(sum(lengths))
    return (vectors * weights).sum(0) / weights.sum()


# ---------------------------------------------------------------- whitening


@dataclass
class Whitening:
    """x -> (x - mean) @ matrix, as a Linear layer: weight = matrix.T, bias = -mean @ matrix."""

    mean: np.ndarray  # (d,)
    matrix: np.ndarray  # (d, k)

    @classmethod
    def fit(cls, vectors: np.ndarray, keep: int | None = None) -> "Whitening":
        n, d = vectors.shape
        if n <= d:
            raise BertkitError(
                f"whitening needs more sentences than dimensions: {n} sentences for {d} dimensions; "
                "fit on a larger corpus"
            )
        if keep is not None and keep > d:
            raise BertkitError(f"whitening-{keep}: the model has only {d} dimensions")
        x = vectors.astype(np.float64)
        mean = x.mean(0)
        cov = np.cov((x - mean).T)
        u, s, _ = np.linalg.svd(cov)
        w = u @ np.diag(1.0 / np.sqrt(np.maximum(s, 1e-12)))
        return cls(mean, w[:, :keep] if keep else w)

    def weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = torch.from_numpy(self.matrix.T.copy()).float()
        bias = torch.from_numpy(-(self.mean @ self.matrix)).float()
        return weight, bias

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight_bias()
        return vectors @ weight.T + bias


class FlowTransform:
    """A trained :class:`bertkit.flow.Glow` used as an embedding transform."""

    def __init__(self, flow):
        self.flow = flow.eval()

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            z, _ = self.flow(vectors.unsqueeze(0) if vectors.dim() == 1 else vectors)
        return z[0] if vectors.dim() == 1 else z

    @classmethod
    def fit(cls, vectors: torch.Tensor, work_dir: Path, seed: int = 42, epochs: float = 2.0) -> "FlowTransform":
        """Train a Glow on ``vectors`` (maximum likelihood) with the shared training loop."""
        from .flow import FlowTask, Glow
        from .trainer import TrainConfig, Trainer

        n = len(vectors)
        if n < 64:
            raise BertkitError(f"flow needs at least 64 sentences to fit, got {n}")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g)
        n_dev = max(1, n // 20)
        dev, train = vectors[order[:n_dev]], vectors[order[n_dev:]]
        torch.manual_seed(seed)
        task = FlowTask(Glow(vectors.shape[1]), dev)
        cfg = TrainConfig(output_dir=work_dir, epochs=epochs, batch_size=32, lr=1e-3, warmup_ratio=0.05,
                          weight_decay=0.0, seed=seed, metric="neg_dev_nll", eval_every=0)
        Trainer(task, list(train), cfg).fit()
        return cls(task.flow)


# ---------------------------------------------------------------- the embedder


class Embedder:
    """A BERT encoder with a pooling (and optional whitening), embedding texts in input order.

    ``compute="auto"`` runs the encoder under bfloat16 autocast where the hardware does bf16
    matmuls natively (measured on all-MiniLM-L6-v2: 1.5x faster, cosine to float32 >= 0.99997),
    else in float32; pooling and transforms always run in float32.
    """

    def __init__(self, model_path: str, max_length: int = 512, batch_size: int = 64, compute: str = "float32"):
        self.autocast = modelio.use_bf16(compute)
        self.path = modelio.resolve_model(model_path)
        self.model = modelio.load_model(self.path, AutoModel, dtype=torch.float32).eval()
        self.tokenizer = modelio.load_tokenizer(self.path)
        limit = self.model.config.max_position_embeddings
        self.encoder = TextEncoder(self.tokenizer, min(max_length, limit))
        self.batch_size = batch_size
        self.saved_spec, self.transform = load_pipeline(Path(self.path)) if Path(self.path).is_dir() else (None, None)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def _pooled_batch(self, texts: Sequence[str], bases: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        per_text = self.encoder.encode_many(list(texts))
        windows = [w for ws in per_text for w in ws]
        inputs = self.encoder.pad_batch(windows)
        need_layers = any(b in ("first-last-avg", "last2avg") for b in bases)
        device = next(self.model.parameters()).device
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                             token_type_ids=inputs["token_type_ids"].to(device), output_hidden_states=need_layers)
        states = [h.float().cpu() for h in (out.hidden_states if need_layers else (out.last_hidden_state,))]
        lengths = inputs["attention_mask"].sum(1).tolist()
        pooled = {b: pool_windows(states, inputs["attention_mask"], b) for b in bases}
        results, start = [], 0
        for ws in per_text:
            rows = slice(start, start + len(ws))
            results.append({b: combine_windows(pooled[b][rows], lengths[rows], b) for b in bases})
            start += len(ws)
        return results

    def embed_many(self, texts: Iterable[str], bases: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """For each text, in input order, a {base pooling: vector} dict (one encoder pass for all)."""
        return map_in_order(
            texts, lambda batch: self._pooled_batch(batch, bases), length=len, batch_size=self.batch_size
        )

    def transform_for(self, spec: PoolingSpec):
        """The fitted whitening or flow that ``spec`` needs, from the model directory."""
        if not spec.fitted:
            return None
        if self.saved_spec != spec or self.transform is None:
            raise BertkitError(
                f"--pooling {spec.name} needs a fitted transform: run `bertkit embed --fit CORPUS --pooling "
                f"{spec.name} -m {self.path} -o NEW_MODEL_DIR` first, and embed with that directory"
            )
        return self.transform

    def embed(self, texts: Iterable[str], spec: PoolingSpec) -> Iterator[torch.Tensor]:
        transform = self.transform_for(spec)
        for vectors in self.embed_many(texts, [spec.base]):
            v = vectors[spec.base]
            yield transform.apply(v) if transform is not None else v


# ---------------------------------------------------------------- saving in the sentence-transformers layout


def save_pipeline(embedder: Embedder, spec: PoolingSpec, transform, directory: Path) -> None:
    """The encoder, its pooling and the whitening, in a directory sentence-transformers loads."""
    directory = Path(directory)
    modelio.save_pretrained(embedder.model, embedder.tokenizer, directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling_dir = "1_Pooling"
    layer_base = spec.base in ("first-last-avg", "last2avg")
    if layer_base:  # average two layers token by token, then mean-pool
        n = embedder.model.config.num_hidden_layers
        start, weights = (1, [1] + [0] * (n - 2) + [1]) if spec.base == "first-last-avg" else (n - 1, [1, 1])
        modules.append({"idx": 1, "name": "1", "path": "1_WeightedLayerPooling",
                        "type": "sentence_transformers.models.WeightedLayerPooling"})
        _write_json(directory / "1_WeightedLayerPooling" / "config.json",
                    {"word_embedding_dimension": embedder.dim, "num_hidden_layers": n, "layer_start": start})
        from safetensors.torch import save_file

        save_file({"layer_weights": torch.tensor(weights, dtype=torch.float32)},
                  str(directory / "1_WeightedLayerPooling" / "model.safetensors"))
        pooling_dir = "2_Pooling"
    pooling_mode = "mean" if layer_base else spec.base
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": pooling_dir,
                    "type": "sentence_transformers.models.Pooling"})
    _write_json(directory / pooling_dir / "config.json", {
        "word_embedding_dimension": embedder.dim,
        **{key: mode == pooling_mode for mode, key in ST_POOLING_MODES.items()},
        "include_prompt": True,
    })
    if isinstance(transform, FlowTransform):
        from .flow import save_flow

        flow_dir = f"{len(modules)}_SentenceFlow"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": flow_dir,
                        "type": "bertkit.flow.SentenceFlow"})
        save_flow(transform.flow, directory / flow_dir)
    elif transform is not None:
        dense_dir = f"{len(modules)}_Dense"
        weight, bias = transform.weight_bias()
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": dense_dir,
                        "type": "sentence_transformers.models.Dense"})
        _write_json(directory / dense_dir / "config.json", {
            "in_features": weight.shape[1], "out_features": weight.shape[0], "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity",
        })
        from safetensors.torch import save_file

        save_file({"linear.weight": weight.contiguous(), "linear.bias": bias.contiguous()},
                  str(directory / dense_dir / "model.safetensors"))
    _write_json(directory / "modules.json", modules)
    _write_json(directory / "sentence_bert_config.json",
                {"max_seq_length": embedder.encoder.max_length, "do_lower_case": False})
    _write_json(directory / "bertkit_pooling.json", {"pooling": spec.name, "base_pooling": spec.base})
    if layer_base:  # sentence-transformers reads all layers only if the config asks for them
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config["output_hidden_states"] = True
        _write_json(directory / "config.json", config)


def load_pipeline(directory: Path):
    """The pooling and its fitted transform (whitening or flow) saved by :func:`save_pipeline`."""
    meta = directory / "bertkit_pooling.json"
    if not meta.exists():
        return None, None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        spec = parse_pooling(info["pooling"], info["base_pooling"])
    except (ValueError, KeyError):
        raise BertkitError(f"{meta} is corrupt") from None
    if spec.flow:
        from .flow import load_flow

        flow_dir = next(directory.glob("*_SentenceFlow"), None)
        if flow_dir is None:
            raise BertkitError(f"{directory} says flow but holds no flow module")
        return spec, FlowTransform(load_flow(flow_dir))
    whitening = None
    if spec.whiten:
        from safetensors.torch import load_file

        dense = next(directory.glob("*_Dense/model.safetensors"), None)
        if dense is None:
            raise BertkitError(f"{directory} says {spec.name} but holds no Dense module")
        tensors = load_file(str(dense))
        weight, bias = tensors["linear.weight"].double().numpy(), tensors["linear.bias"].double().numpy()
        matrix = weight.T
        mean = -np.linalg.lstsq(matrix.T, bias, rcond=None)[0]
        whitening = Whitening(mean, matrix)
    return spec, whitening


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------- evaluation on STS pairs


def read_pairs(path: str) -> tuple[list[str], list[str], list[float]]:
    """s1<TAB>s2<TAB>score lines (a header line is skipped if its score is not a number)."""
    from .textio import read_lines

    s1, s2, scores = [], [], []
    for lineno, line in read_lines(path):
        cells = line.split("\t")
        if len(cells) != 3:
            raise BertkitError(f"{path}:{lineno}: expected s1<TAB>s2<TAB>score, got {len(cells)} columns")
        try:
            score = float(cells[2])
        except ValueError:
            if lineno == 1:
                continue
            raise BertkitError(f"{path}:{lineno}: score {cells[2]!r} is not a number") from None
        s1.append(cells[0])
        s2.append(cells[1])
        scores.append(score)
    if not scores:
        raise BertkitError(f"{path} has no pairs")
    return s1, s2, scores


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def evaluate_poolings(embedder: Embedder, pairs_path: str, specs: Sequence[PoolingSpec],
                      fit_texts: Sequence[str] | None = None, work_dir: Path | None = None) -> dict[str, float]:
    """Spearman x 100 of cosine similarity vs gold scores, for each pooling, in one encoder pass.

    Whitening is fitted on ``fit_texts`` (e.g. a train split), else taken from the model directory.
    """
    s1, s2, gold = read_pairs(pairs_path)
    bases = sorted({s.base for s in specs})
    vectors = list(embedder.embed_many(s1 + s2, bases))
    fitted = {}
    if fit_texts is not None and any(s.fitted for s in specs):
        fit_bases = sorted({s.base for s in specs if s.fitted})
        fit_vectors = list(embedder.embed_many(fit_texts, fit_bases))
        for s in specs:
            if s.fitted:
                fitted[s] = fit_transform(s, torch.stack([v[s.base] for v in fit_vectors]), work_dir)
    results = {}
    n = len(s1)
    for spec in specs:
        emb = torch.stack([v[spec.base] for v in vectors])
        if spec.fitted:
            transform = fitted.get(spec) or embedder.transform_for(spec)
            emb = transform.apply(emb)
        sims = cosine(emb[:n], emb[n:]).tolist()
        results[spec.name] = round(100 * spearman(sims, gold), 2)
    return results


ALL_POOLINGS = ("cls", "mean", "max", "mean_sqrt_len", "first-last-avg", "last2avg", "whitening", "whitening-256", "flow")


def fit_transform(spec: PoolingSpec, vectors: torch.Tensor, work_dir: Path | None):
    """Whitening (closed form) or flow (trained) for ``spec`` from pooled ``vectors``."""
    if spec.flow:
        import tempfile

        if work_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                return FlowTransform.fit(vectors, Path(tmp) / "flow")
        return FlowTransform.fit(vectors, work_dir)
    keep = spec.keep if spec.keep is None or spec.keep <= vectors.shape[1] else None
    if spec.keep and keep is None:
        raise BertkitError(f"{spec.name}: the model has only {vectors.shape[1]} dimensions")
    return Whitening.fit(vectors.numpy(), keep)


def default_pooling(embedder: Embedder) -> str:
    return embedder.saved_spec.name if embedder.saved_spec else "mean"


def fit_and_save(embedder: Embedder, spec: PoolingSpec, texts: Iterable[str], directory: Path):
    """Fit the whitening or flow of ``spec`` on ``texts`` and save the pipeline to ``directory``."""
    transform = None
    if spec.fitted:
        vectors = torch.stack([v[spec.base] for v in embedder.embed_many(texts, [spec.base])])
        transform = fit_transform(spec, vectors, Path(directory) / ".flow-training")
    save_pipeline(embedder, spec, transform, directory)
    from .progress import log

    log(f"saved {spec.name} pipeline to {directory}")
    return transform


PRECISIONS = ("float32", "float16", "int8", "binary")


def quantize(v: np.ndarray, precision: str) -> np.ndarray:
    if precision == "float32":
        return v.astype(np.float32)
    if precision == "float16":
        return v.astype(np.float16)
    if precision == "int8":
        return np.clip(np.round(v * 127), -127, 127).astype(np.int8)
    return np.packbits(v > 0)


def write_vectors(vectors: Iterable[torch.Tensor], output: str | None, normalize: bool, precision: str) -> int:
    """Write one vector per input, in order, as TSV (stdout default), JSON lines or .npy."""
    from .textio import output_stream

    if precision not in PRECISIONS:
        raise BertkitError(f"unknown --precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision == "int8" and not normalize:
        raise BertkitError("--precision int8 needs --normalize (it maps [-1, 1] to [-127, 127])")
    fmt = "tsv" if output in (None, "-") else Path(output).suffix.lower().lstrip(".")
    if fmt not in ("tsv", "jsonl", "npy", "txt"):
        raise BertkitError(f"-o {output}: use .npy, .jsonl or .tsv")

    def rows():
        for v in vectors:
            if normalize:
                v = torch.nn.functional.normalize(v, dim=-1)
            yield quantize(v.float().numpy(), precision)

    if fmt == "npy":
        return _write_npy(rows(), Path(output))
    n = 0
    with output_stream(output) as out:
        for row in rows():
            values = row.tolist()
            if fmt == "jsonl":
                out.write(json.dumps(values) + "\n")
            else:
                out.write("\t".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in values) + "\n")
            n += 1
    return n


def _write_npy(rows: Iterable[np.ndarray], path: Path) -> int:
    """Stream rows to disk, then prepend the .npy header: memory stays flat for any input size."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".raw")
    n, first = 0, None
    try:
        with os.fdopen(fd, "wb") as raw:
            for row in rows:
                first = row if first is None else first
                raw.write(np.ascontiguousarray(row).tobytes())
                n += 1
        if first is None:
            raise BertkitError("no input lines: nothing to write")
        header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": (n, first.shape[0])}
        fd2, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd2, "wb") as out, open(raw_name, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            while chunk := raw.read(1 << 20):
                out.write(chunk)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(raw_name):
            os.unlink(raw_name)
    return n
