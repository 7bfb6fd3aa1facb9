import json

import numpy as np
import pytest
import torch

from bertkit.embed.model import PoolingSpec
from bertkit.embed.pipeline import save_pipeline
from bertkit.embed.runner import Embedder
from bertkit.embed.task import fit_flow
from bertkit.embed.flow import Glow, SentenceFlow
from conftest import MONEY, SPORT


def test_log_determinant_matches_the_jacobian():
    torch.manual_seed(0)
    flow = Glow(6, steps=2, hidden=8)
    x = torch.randn(16, 6)
    flow.train()
    flow(x)  # actnorm initialises from the first batch
    flow.eval()
    for layer in flow.layers:  # make couplings non-trivial
        for p in layer.parameters():
            p.data += 0.1 * torch.randn_like(p)
    point = torch.randn(1, 6)
    _, logdet = flow(point)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0][0], point[0])
    assert logdet.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-4)


def test_fitted_flow_gaussianises_correlated_vectors(tmp_path):
    torch.manual_seed(0)
    mixing = torch.randn(8, 8)
    x = torch.randn(2048, 8) @ mixing + 5.0
    transform = fit_flow(x, tmp_path / "flow", epochs=3)
    z = transform.apply(x)
    assert z.mean(0).abs().max() < 0.2
    cov = torch.cov(z.T)
    assert (cov - torch.eye(8)).abs().max() < 0.3
    assert (tmp_path / "flow" / "trainer_state.json").exists()  # trained by the shared loop


def test_flow_pipeline_round_trips_and_loads_in_sentence_transformers(tmp_path, tiny_model):
    import sentence_transformers as st
    embedder = Embedder.load(str(tiny_model))
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list(SPORT + MONEY), size=rng.integers(4, 15))) for _ in range(200)]
    spec = PoolingSpec("mean", flow=True)
    vectors = torch.stack([v["mean"] for v in embedder.embed_many(texts, ["mean"])])
    save_pipeline(embedder.model, embedder.tokenizer, embedder.encoder.max_length, spec, fit_flow(vectors, tmp_path / "work", epochs=1), tmp_path / "m")
    reloaded = Embedder.load(str(tmp_path / "m"))
    ours = torch.stack(list(reloaded.embed(texts[:4], spec))).numpy()
    # sentence-transformers imports a class from outside its package only when trusted; here the
    # saved modules are assembled by hand, which is what that import would do
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert modules[-1] == {"idx": 2, "name": "2", "path": "2_SentenceFlow", "type": "bertkit.embed.flow.SentenceFlow"}
    from sentence_transformers.models import Pooling, Transformer

    model = st.SentenceTransformer(device="cpu", modules=[
        Transformer(str(tmp_path / "m")), Pooling.load(str(tmp_path / "m" / "1_Pooling")),
        SentenceFlow.load(str(tmp_path / "m"), "2_SentenceFlow")])
    theirs = model.encode(texts[:4], convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4)
    # the class names sentence-transformers imports for this and for older pipelines both resolve
    import importlib

    for name in ("bertkit.embed.flow.SentenceFlow", "bertkit.flow.SentenceFlow"):
        module, cls = name.rsplit(".", 1)
        assert getattr(importlib.import_module(module), cls) is SentenceFlow
