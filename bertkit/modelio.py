"""Model I/O: find, check, load and save BERT-family models in the Hugging Face layout.

A model is a directory with ``config.json``, ``model.safetensors`` and a tokenizer
(``vocab.txt`` or ``tokenizer.json``); what bertkit saves, ``transformers.AutoModel`` loads.
Weights load from safetensors only (never pickle), and never with ``trust_remote_code``.
Nothing here touches the network: a hub id works only when it is already in the local
Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .errors import BertkitError

# transformers reports each load (missing pooler, unused MLM head: expected when a pretrained
# encoder gets a new head) and shows its own progress bars; our commands speak for themselves.
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

DEFAULT_MODEL = "bertkit-zh-mini"
REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    """The shared data sets (vocabulary, confusion sets): $BERTKIT_SHARED_DATA, else ../shared/data
    beside the checkout, where this project's machines keep them."""
    return Path(os.environ.get("BERTKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def models_root() -> Path:
    """Where shipped models live: $BERTKIT_MODELS, else the checkout's ``data/models``."""
    return Path(os.environ.get("BERTKIT_MODELS", REPO_ROOT / "data" / "models"))


def resolve_model(name: str | os.PathLike | None, default: str = DEFAULT_MODEL) -> str:
    """Turn a model argument into a loadable local path (or a cached hub id), or fail clearly."""
    name = str(name or default)
    path = Path(name).expanduser()
    if path.exists():
        check_model_dir(path)
        return str(path)
    shipped = models_root() / name
    if shipped.exists():
        check_model_dir(shipped)
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


def check_model_dir(path: Path) -> None:
    """Fail with one clear line unless ``path`` holds a complete, safe model."""
    if not path.is_dir():
        raise BertkitError(f"{path} is not a model directory")
    config = path / "config.json"
    if not config.exists():
        raise BertkitError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        raise BertkitError(f"{config} is not valid JSON: the model directory is corrupt") from None
    if not isinstance(data, dict):
        raise BertkitError(f"{config} is not a model config: the model directory is corrupt")
    if "auto_map" in data or data.get("model_type") not in CONFIG_MAPPING:
        # a custom architecture would mean running code shipped with the model: never
        raise BertkitError(f"{path}: model_type {data.get('model_type')!r} needs custom code; bertkit loads only "
                           "architectures built into transformers")
    has_safetensors = (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    if not has_safetensors:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise BertkitError(f"{path} holds only pickle weights (.bin/.pt); bertkit loads safetensors only")
        raise BertkitError(f"{path} has no model.safetensors: the model directory is incomplete")
    if not ((path / "vocab.txt").exists() or (path / "tokenizer.json").exists()):
        raise BertkitError(f"{path} has no tokenizer (vocab.txt or tokenizer.json)")


def load_tokenizer(model: str):
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise BertkitError(f"cannot load the tokenizer of {model}: {_first_line(exc)}") from None


def load_model(model: str, cls, **kwargs) -> PreTrainedModel:
    """``cls.from_pretrained`` from safetensors, offline, with load errors as one line."""
    try:
        return cls.from_pretrained(model, local_files_only=True, use_safetensors=True, trust_remote_code=False, **kwargs)
    except BertkitError:
        raise
    except Exception as exc:
        raise BertkitError(f"cannot load model {model}: {_first_line(exc)}") from None


def save_pretrained(model: PreTrainedModel, tokenizer, directory: Path, dtype: torch.dtype | None = None) -> None:
    """Save model + tokenizer in the HF layout; each file appears atomically (written aside, then renamed)."""
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
    for item in tmp.iterdir():
        os.replace(item, directory / item.name)
    tmp.rmdir()


def _copy_as(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    import copy

    return copy.deepcopy(model).to(dtype)


COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def native_bf16() -> bool:
    """True where bf16 matmuls run in hardware: a GPU, or a CPU with AVX512-BF16 / AMX."""
    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(compute: str) -> bool:
    """Whether inference runs under bfloat16 autocast for ``--compute`` float32/bfloat16/auto."""
    if compute not in COMPUTE_DTYPES:
        raise BertkitError(f"unknown --compute {compute!r} ({', '.join(COMPUTE_DTYPES)})")
    return compute == "bfloat16" or (compute == "auto" and native_bf16())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
