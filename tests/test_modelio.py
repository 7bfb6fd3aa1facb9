import shutil

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertkit import modelio
from bertkit.errors import BertkitError


def test_saved_model_loads_in_transformers(tiny_model):
    model = AutoModel.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok("我爱北京", return_tensors="pt")
    assert model(**ids).last_hidden_state.shape == (1, 6, 32)


def test_missing_partial_and_corrupt_dirs(tmp_path, tiny_model):
    with pytest.raises(BertkitError, match="does not exist"):
        modelio.resolve_model(str(tmp_path / "nope"))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(BertkitError, match="no model.safetensors"):
        modelio.resolve_model(str(partial))
    (partial / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BertkitError, match="pickle weights"):
        modelio.resolve_model(str(partial))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model, corrupt)
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(BertkitError, match="not valid JSON"):
        modelio.resolve_model(str(corrupt))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    path = modelio.resolve_model(str(truncated))
    with pytest.raises(BertkitError, match="cannot load model"):
        modelio.load_model(path, AutoModel)


def test_hub_id_offline_is_a_clear_error(tmp_path):
    from conftest import run_cli

    # a fresh process, so the empty cache and offline mode apply from the start
    proc = run_cli("embed", "-", "-m", "someone/not-cached-bert", input=b"x\n",
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 1 and b"offline" in proc.stderr and b"Traceback" not in proc.stderr


def test_custom_code_models_are_refused(tmp_path, tiny_model):
    evil = tmp_path / "evil"
    shutil.copytree(tiny_model, evil)
    (evil / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoModel": "evil.Model"}}')
    with pytest.raises(BertkitError, match="custom code"):
        modelio.resolve_model(str(evil))


def test_save_fp16_halves_weights(tmp_path, tiny_model):
    model = modelio.load_model(str(tiny_model), AutoModel, dtype=torch.float32)
    modelio.save_pretrained(model, None, tmp_path / "half", dtype=torch.float16)
    assert AutoModel.from_pretrained(tmp_path / "half").dtype == torch.float16
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
