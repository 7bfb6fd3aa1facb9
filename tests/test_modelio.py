import json
import shutil

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertkit.core import modelio
from bertkit.core.errors import BertkitError


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
    lattice_like = tmp_path / "lattice_like"  # no config.json and a manifest that does not parse
    lattice_like.mkdir()
    (lattice_like / "lattice_config.json").write_text("{}")
    (lattice_like / "bertkit.json").write_text("{not json")
    with pytest.raises(BertkitError, match="bertkit.json is corrupt"):
        modelio.resolve_model(str(lattice_like))
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


def test_manifest_round_trips_and_reads_older_directories(tmp_path, tiny_model):
    manifest = modelio.Manifest("corrector", parts={"detector": "detector.safetensors"}, config={"threshold": 0.4})
    manifest.save(tmp_path)
    assert modelio.Manifest.read(tmp_path) == manifest
    # no bertkit.json: the kind comes from the files earlier versions wrote, or from config.json
    assert modelio.Manifest.read(tiny_model).kind == "masked-lm"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "bertkit_pooling.json").write_text('{"pooling": "whitening", "base_pooling": "mean"}')
    assert modelio.Manifest.read(legacy) == modelio.Manifest("sentence-embedding", config={"pooling": "whitening", "base_pooling": "mean"})
    # saving the manifest over an older directory retires its settings file, which would be stale
    modelio.Manifest("sentence-embedding", config={"pooling": "whitening", "base_pooling": "mean"}).save(legacy)
    assert not (legacy / "bertkit_pooling.json").exists() and modelio.Manifest.read(legacy).kind == "sentence-embedding"
    (tmp_path / "bertkit.json").write_text("{broken")
    with pytest.raises(BertkitError, match="corrupt"):
        modelio.Manifest.read(tmp_path)
    (tmp_path / "bertkit.json").write_text('{"format": 2, "kind": "lattice"}')
    with pytest.raises(BertkitError, match="newer than this bertkit"):
        modelio.Manifest.read(tmp_path)


def test_parts_save_and_load_symmetrically(tmp_path):
    from torch import nn

    def model(seed):
        torch.manual_seed(seed)
        return nn.ModuleDict({"encoder": nn.Linear(3, 3), "head": nn.Linear(3, 2)})

    source, target = model(0), model(1)
    manifest = modelio.Manifest("encoder")
    modelio.save_part(source, tmp_path, manifest, "head", prefix="head")
    assert manifest.parts == {"head": "head.safetensors"}
    modelio.load_part(target, tmp_path, manifest, "head", prefix="head")
    assert torch.equal(target["head"].weight, source["head"].weight)
    assert not torch.equal(target["encoder"].weight, source["encoder"].weight)  # only the part
    with pytest.raises(BertkitError, match="cannot load the head"):
        modelio.load_part(target, tmp_path, manifest, "head", prefix=("head", "encoder"))  # encoder missing
    with pytest.raises(BertkitError, match="names no part"):
        modelio.load_part(target, tmp_path, manifest, "flow", prefix="flow")


def test_an_architecture_transformers_does_not_know_loads_through_bertkit_only(tmp_path, tiny_model):
    """A model_type transformers lacks is refused, unless the manifest names an architecture built
    into bertkit: then bertkit's own builder makes it, and no code comes from the directory."""
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model, custom)
    config = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps(config | {"model_type": "bertkit-test-lattice"}))
    with pytest.raises(BertkitError, match="needs custom code"):
        modelio.resolve_model(str(custom))
    modelio.Manifest("encoder", architecture="bertkit-test-lattice").save(custom)
    with pytest.raises(BertkitError, match="not one this version of bertkit builds"):
        modelio.resolve_model(str(custom))
    built = []

    @modelio.register_architecture("bertkit-test-lattice")
    def build(directory, cls, **kwargs):
        built.append(directory)
        return "a lattice model"

    try:
        path = modelio.resolve_model(str(custom))
        assert modelio.load_model(path, AutoModel) == "a lattice model" and built == [custom]
        (custom / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModel": "evil.Model"}}))
        with pytest.raises(BertkitError, match="custom code"):  # auto_map stays refused
            modelio.resolve_model(str(custom))
    finally:
        del modelio.ARCHITECTURES["bertkit-test-lattice"]


def test_train_takes_the_base_models_recorded_fine_tuning_rate_unless_lr_is_given(tmp_path, tiny_model, news_data):
    from conftest import cli

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    assert modelio.fine_tune_lr(str(base), "classify") == (5e-5, "BERT's fine-tuning rate")  # records nothing
    modelio.Manifest("masked-lm", config={"fine_tune": {"classify": {"lr": 3e-3}}}).save(base)
    assert modelio.fine_tune_lr(str(base), "classify")[0] == 3e-3
    assert modelio.fine_tune_lr(str(base), "ner")[0] == 5e-5  # another task's rate is not borrowed
    train, _ = news_data
    common = [str(train), "-m", str(base), "--max-steps", "1", "--batch-size", "4"]
    for out, lr_args, lr in (("a", [], 3e-3), ("b", ["--lr", "1e-4"], 1e-4)):
        cli("train", *common, *lr_args, "-o", str(tmp_path / out), check=True)
        state = json.loads((tmp_path / out / "trainer_state.json").read_text())
        assert state["config"]["lr"] == lr
    assert state["config"]["extra"].get("lr_from") is None
    assert json.loads((tmp_path / "a/trainer_state.json").read_text())["config"]["extra"]["lr_from"].startswith("the rate base records")


def test_the_shipped_base_records_the_rates_dev_chose_for_it():
    base = modelio.resolve_model(None)
    assert modelio.fine_tune_lr(base, "classify")[0] == modelio.fine_tune_lr(base, "ner")[0] == 5e-4
