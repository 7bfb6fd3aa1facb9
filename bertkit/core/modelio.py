"""Model I/O: find, check, load and save BERT-family models in the Hugging Face layout.

A model is a directory with ``config.json``, ``model.safetensors`` and a tokenizer
(``vocab.txt`` or ``tokenizer.json``); what bertkit saves, ``transformers.AutoModel`` loads.
Beside them, ``bertkit.json`` (:class:`Manifest`) says what kind of model the directory holds
and names the weight files a technique adds (safetensors, each saved and loaded by
:func:`save_part` / :func:`load_part`).

Models transformers does not know (a model with pruned FFN widths, int8 weights) are stored the
same way: ``config.json`` stays a BERT config for what transformers can build, the rest goes into
parts, and the manifest's ``architecture`` names a builder registered in bertkit's own code
(:func:`register_architecture`).  A model no BERT config describes (a Lattice-BERT) has no
``config.json`` at all, so that transformers cannot mistake it for a BERT; its layout is listed
in :data:`OWN_LAYOUTS`, and only callers that ask for it get such a directory past
:func:`resolve_model`.  Such a directory carries data only, never
code: ``auto_map`` and unknown ``model_type`` values without a registered builder are refused,
and nothing loads with ``trust_remote_code``.  Weights load from safetensors only (never pickle).
Nothing here touches the network: a hub id works only when it is already in the local Hugging
Face cache.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .errors import BertkitError
from .files import read_json, settle_dir_modes, write_json_atomic
from .weights import load_weights, save_weights

# transformers reports each load (missing pooler, unused MLM head: expected when a pretrained
# encoder gets a new head) and shows its own progress bars; our commands speak for themselves.
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

DEFAULT_MODEL = "bertkit-zh-mini"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: bertkit/core/modelio.py


def shared_data() -> Path:
    """The shared data sets (vocabulary, confusion sets): $BERTKIT_SHARED_DATA, else ../shared/data
    beside the checkout, where this project's machines keep them."""
    return Path(os.environ.get("BERTKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def models_root() -> Path:
    """Where shipped models live: $BERTKIT_MODELS, else the checkout's ``data/models``."""
    return Path(os.environ.get("BERTKIT_MODELS", REPO_ROOT / "data" / "models"))


def resolve_model(name: str | os.PathLike | None, default: str = DEFAULT_MODEL, *,
                  layouts: Collection[str] = ()) -> str:
    """Turn a model argument into a loadable local path (or a cached hub id), or fail clearly.

    ``layouts``: the architectures of :data:`OWN_LAYOUTS` (directories without ``config.json``)
    the caller can run; any other such directory is refused here, in one line, because every
    command resolves its model before loading it, and a BERT-family command given, say, a
    lattice model would otherwise fail later with a less helpful message."""
    name = str(name or default)
    path = Path(name).expanduser()
    if path.exists():
        check_model_dir(path, layouts)
        return str(path)
    shipped = models_root() / name
    if shipped.exists():
        check_model_dir(shipped, layouts)
        return str(shipped)
    if name == default:
        raise BertkitError(f"the default model {default} is not in {models_root()}: install bertkit from its "
                           "checkout (pip install -e .), set BERTKIT_MODELS, or pass -m MODEL_DIR")
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1:
        raise BertkitError(f"model directory {name} does not exist")
    try:  # a hub id: only usable if a previous online session cached it
        AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
    except Exception:
        raise BertkitError(
            f"model {name!r} is neither a local directory nor in the Hugging Face cache, and this machine is "
            "offline: download it where there is network and pass its directory"
        ) from None
    return name


# the encoders every command runs (checked in tests/test_modelio.py): BERT and the models that keep
# its interface (input_ids, attention_mask, optional token_type_ids -> hidden states)
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "megatron-bert",
                           "albert", "distilbert", "deberta", "deberta-v2"})


# architectures whose directories hold no config.json (transformers must not mistake them for a
# BERT): name -> (what to call it, the files it needs besides weights and tokenizer, what makes it)
OWN_LAYOUTS = {"lattice-bert": ("a Lattice-BERT model", ("lattice_config.json", "words.txt"),
                                "bertkit pretrain --multigrain")}
# the OWN_LAYOUTS architectures that classification and NER (bertkit train, predict, eval) fine-tune and
# run: their builders make ``AutoModelForSequenceClassification`` / ``...ForTokenClassification``
# stand-ins (bertkit.multigrain.heads)
TASK_LAYOUTS = ("lattice-bert",)


def check_model_dir(path: Path, layouts: Collection[str] = ()) -> None:
    """Fail with one clear line unless ``path`` holds a complete, safe model; a directory of an
    :data:`OWN_LAYOUTS` architecture passes only if it is in ``layouts`` (see :func:`resolve_model`)."""
    if not path.is_dir():
        raise BertkitError(f"{path} is not a model directory")
    own = _own_layout(path)
    if own is not None:
        _check_own_layout(path, own, layouts)
        return
    config = path / "config.json"
    if not config.exists():
        raise BertkitError(_no_model_yet(path) if (path / "checkpoints").is_dir() else
                           f"{path} has no config.json: not a Hugging Face model directory")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        raise BertkitError(f"{config} is not valid JSON: the model directory is corrupt") from None
    if not isinstance(data, dict):
        raise BertkitError(f"{config} is not a model config: the model directory is corrupt")
    architecture = Manifest.read(path).architecture
    if architecture != TRANSFORMERS and architecture_builder(architecture) is None:
        raise BertkitError(f"{path}: architecture {architecture!r} is not one this version of bertkit builds")
    known = data.get("model_type") in CONFIG_MAPPING or architecture in ARCHITECTURES
    if "auto_map" in data or not known:
        # a custom architecture would mean running code shipped with the model: never
        raise BertkitError(f"{path}: model_type {data.get('model_type')!r} needs custom code; bertkit loads only "
                           "architectures built into transformers or into bertkit")
    if architecture == TRANSFORMERS and data.get("model_type") not in ENCODER_TYPES:
        raise BertkitError(f"{path}: model_type {data.get('model_type')!r} is not a BERT-family encoder; bertkit "
                           f"runs {', '.join(sorted(ENCODER_TYPES))}")
    _check_weights_and_tokenizer(path)


def _check_weights_and_tokenizer(path: Path) -> None:
    has_safetensors = (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    if not has_safetensors:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise BertkitError(f"{path} holds only pickle weights (.bin/.pt); bertkit loads safetensors only")
        raise BertkitError(f"{path} has no model.safetensors: the model directory is incomplete")
    if not ((path / "vocab.txt").exists() or (path / "tokenizer.json").exists()):
        raise BertkitError(f"{path} has no tokenizer (vocab.txt or tokenizer.json)")


def _own_layout(path: Path) -> str | None:
    """The :data:`OWN_LAYOUTS` architecture ``path``'s manifest names, else None (also for a
    corrupt manifest beside a config.json: the checks of a config.json directory report that as
    before; without a config.json the corrupt manifest is the news, not the missing config)."""
    if not (path / MANIFEST).exists():
        return None
    try:
        architecture = Manifest.read(path).architecture
    except BertkitError:
        if (path / "config.json").exists():
            return None
        raise
    return architecture if architecture in OWN_LAYOUTS else None


def _check_own_layout(path: Path, architecture: str, layouts: Collection[str]) -> None:
    what, needed, maker = OWN_LAYOUTS[architecture]
    if architecture not in layouts:
        raise BertkitError(f"{path} is {what} ({maker}); this command cannot use it yet")
    for name in needed:
        if not (path / name).exists():
            raise BertkitError(f"{path} has no {name}: the model directory is incomplete")
    _check_weights_and_tokenizer(path)


def _no_model_yet(path: Path) -> str:
    """A training run's output directory gets its model at the first evaluation: before that (or
    when the run was stopped before it) only ``checkpoints/`` is there; say how to go on."""
    return (f"{path} has no model yet (its training stopped before the first evaluation): its checkpoints are in "
            f"{path / 'checkpoints'}; continue with the same command plus --resume")


def load_tokenizer(model: str):
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise BertkitError(f"cannot load the tokenizer of {model}: {_first_line(exc)}") from None


def load_model(model: str, cls, **kwargs) -> PreTrainedModel:
    """``cls.from_pretrained`` from safetensors, offline, with load errors as one line; a directory
    whose manifest names a bertkit architecture is built by that architecture's registered builder."""
    try:
        architecture = Manifest.read(Path(model)).architecture if Path(model).is_dir() else TRANSFORMERS
        if architecture != TRANSFORMERS:
            return architecture_builder(architecture)(Path(model), cls, **kwargs)
        return cls.from_pretrained(model, local_files_only=True, use_safetensors=True, trust_remote_code=False, **kwargs)
    except BertkitError:
        raise
    except Exception as exc:
        raise BertkitError(f"cannot load model {model}: {_first_line(exc)}") from None


def is_inference_only(model: torch.nn.Module) -> bool:
    """Whether ``model`` has modules that run inference only (``inference_only``: a compressed
    model's lean layers, bertkit.compress.inference), so it is neither trained nor saved again."""
    return any(getattr(m, "inference_only", False) for m in model.modules())


def save_pretrained(model: PreTrainedModel, tokenizer, directory: Path, dtype: torch.dtype | None = None) -> None:
    """Save model + tokenizer in the HF layout; each file appears atomically (written aside, then renamed)."""
    if is_inference_only(model):
        raise BertkitError("this model was loaded for inference only (a compressed model): it is not saved again")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".saving"
    if tmp.exists():
        shutil.rmtree(tmp)
    if dtype is not None:
        model = _copy_as(model, dtype)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    settle_dir_modes(tmp)  # safetensors writes its files 0600
    for item in tmp.iterdir():
        os.replace(item, directory / item.name)
    tmp.rmdir()


def save_model(model: torch.nn.Module, tokenizer, directory: Path, kind: str, dtype: torch.dtype | None = None) -> None:
    """A fine-tuned model of manifest ``kind`` with its tokenizer: in the HF layout
    (:func:`save_pretrained`, then the manifest), or, for a model of a bertkit architecture that
    writes its own directory (a ``save_model_dir(tokenizer, directory, kind, dtype)`` method, e.g.
    a fine-tuned Lattice-BERT), that way."""
    own = getattr(model, "save_model_dir", None)
    if own is not None:
        own(tokenizer, Path(directory), kind=kind, dtype=dtype)
        return
    save_pretrained(model, tokenizer, directory, dtype=dtype)
    Manifest(kind).save(directory)


def _copy_as(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    import copy

    return copy.deepcopy(model).to(dtype)

# ---------------------------------------------------------------- the manifest: what a directory holds

MANIFEST = "bertkit.json"
TRANSFORMERS = "transformers"  # the architecture value of a model transformers builds by itself
FORMAT = 1  # the newest manifest format this version reads and writes
LEGACY_FILES = {"corrector.json": "corrector", "bertkit_pooling.json": "sentence-embedding"}


@dataclass
class Manifest:
    """``bertkit.json``: what kind of model a directory holds and what lies beside the backbone.

    - ``kind``: which runner loads it (``classifier``, ``corrector``, ``sentence-embedding``, ...).
    - ``architecture``: ``"transformers"`` when ``config.json`` + ``model.safetensors`` are a model
      that transformers builds by itself (``AutoModel`` loads the whole backbone); otherwise the
      name of an architecture registered in bertkit's own code (:func:`register_architecture`),
      never code shipped with the model: a directory holds data only.
    - ``parts``: part name -> file (safetensors) or module folder, relative to the directory: the
      weights a technique adds beside the backbone (a corrector's detector, an embedding's
      whitening), each saved and loaded by :func:`save_part` / :func:`load_part`.
    - ``config``: the technique's own settings (e.g. a corrector's threshold).

    A directory without ``bertkit.json`` is read from the files earlier versions wrote
    (``corrector.json``, ``bertkit_pooling.json``) or from ``config.json`` alone.
    """

    kind: str
    architecture: str = TRANSFORMERS
    parts: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    format: int = 1
    # the file the manifest was read from (bertkit.json, or an older settings file), for messages
    source: Path | None = field(default=None, compare=False, repr=False)

    def save(self, directory: Path) -> None:
        """Write ``bertkit.json``; an older settings file it replaces is removed (it would be stale)."""
        write_json_atomic(Path(directory) / MANIFEST, {"format": self.format, "kind": self.kind,
                                                       "architecture": self.architecture, "parts": self.parts,
                                                       "config": self.config})
        for name in LEGACY_FILES:
            (Path(directory) / name).unlink(missing_ok=True)
        self.source = Path(directory) / MANIFEST

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.exists():
            return _legacy_manifest(directory)
        try:
            data = read_json(path)
            manifest = cls(kind=str(data["kind"]), architecture=str(data.get("architecture", TRANSFORMERS)),
                           parts=dict(data.get("parts") or {}), config=dict(data.get("config") or {}),
                           format=int(data.get("format", 1)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise BertkitError(f"{path} is corrupt") from None
        if manifest.format > FORMAT:
            raise BertkitError(f"{path} has format {manifest.format}, newer than this bertkit reads ({FORMAT}): "
                               "upgrade bertkit")
        manifest.source = path
        return manifest


FALLBACK_LR = 5e-5  # BERT's fine-tuning rate (Devlin et al. 2019, appendix A.3), for bases that record none


def fine_tune_lr(model: str, task: str) -> tuple[float, str]:
    """The peak learning rate to fine-tune ``model`` for ``task`` with, and where it comes from.

    A base model may record in its manifest the rate dev chose for it (``config.fine_tune.TASK.lr``):
    the shipped 4 x 256 base wants 10x BERT-base's 5e-5 (README: pretraining gain table, NER
    section), which a user cannot guess.  Anything else gets 5e-5."""
    path = Path(model)
    if path.is_dir() and (path / MANIFEST).exists():
        recipe = (Manifest.read(path).config.get("fine_tune") or {}).get(task) or {}
        if isinstance(recipe.get("lr"), (int, float)) and recipe["lr"] > 0:
            return float(recipe["lr"]), f"the rate {path.name} records for {task}"
    return FALLBACK_LR, "BERT's fine-tuning rate"


def _legacy_manifest(directory: Path) -> Manifest:
    """The manifest of a directory written before ``bertkit.json`` existed."""
    for name, kind in LEGACY_FILES.items():
        path = directory / name
        if path.exists():
            try:
                config = read_json(path)
                if not isinstance(config, dict):
                    raise ValueError
            except (OSError, ValueError, UnicodeDecodeError):
                raise BertkitError(f"{path} is corrupt") from None
            parts = {"detector": "detector.safetensors"} if kind == "corrector" and config.get("kind") == "soft-masked" else {}
            return Manifest(kind, parts=parts, config=config, source=path)
    architectures = _config(directory).get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return Manifest("classifier")
    if any(str(a).endswith("ForMaskedLM") for a in architectures):
        return Manifest("masked-lm")
    return Manifest("encoder")


def _config(directory: Path) -> dict:
    try:
        data = read_json(directory / "config.json")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_part(model: torch.nn.Module, directory: Path, manifest: Manifest, name: str,
              prefix: str | tuple[str, ...], dtype: torch.dtype | None = None) -> None:
    """Save the weights under ``prefix`` as the part ``name`` (``NAME.safetensors``) and record it;
    the caller saves the manifest once all parts are written."""
    filename = manifest.parts.get(name, f"{name}.safetensors")
    save_weights(model, Path(directory) / filename, prefix=prefix, dtype=dtype)
    manifest.parts[name] = filename


def load_part(model: torch.nn.Module, directory: Path, manifest: Manifest, name: str,
              prefix: str | tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Load the part ``name`` that :func:`save_part` wrote into ``model``; one-line errors."""
    filename = manifest.parts.get(name)
    if filename is None:
        raise BertkitError(f"{directory}: {MANIFEST} names no part {name!r}")
    try:
        load_weights(model, Path(directory) / filename, prefix=prefix, optional=optional)
    except Exception as exc:
        raise BertkitError(f"cannot load the {name} of {directory}: {_first_line(exc)}") from None


# builders of the architectures transformers does not know: name -> (directory, requested class,
# from_pretrained's keyword arguments) -> model.  Code in bertkit, never in a model directory.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}
# the architectures bertkit ships, by the module that registers each: imported when a directory
# names one, so that loading a model never depends on what the caller happened to import
BUILTIN_ARCHITECTURES = {"bertkit-compressed": "bertkit.compress.model", "lattice-bert": "bertkit.multigrain.model"}


def architecture_builder(name: str) -> Callable[..., torch.nn.Module] | None:
    """The builder registered for ``name`` (importing the bertkit module that ships it), or None."""
    if name not in ARCHITECTURES and name in BUILTIN_ARCHITECTURES:
        importlib.import_module(BUILTIN_ARCHITECTURES[name])
    return ARCHITECTURES.get(name)


def register_architecture(name: str):
    """Decorator: ``@register_architecture("lattice-bert")`` on a builder ``(directory, cls, **kwargs)``."""

    def register(builder):
        if name == TRANSFORMERS:
            raise ValueError(f"{name!r} is reserved for architectures transformers builds")
        ARCHITECTURES[name] = builder
        return builder

    return register


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
