import json
import resource

import numpy as np
import pytest
import torch

from bertkit.embed.model import PoolingSpec, Whitening, parse_pooling, pool_windows
from bertkit.embed.pipeline import save_pipeline
from bertkit.embed.runner import Embedder
from bertkit.core.errors import BertkitError
from conftest import MONEY, SPORT, cli


@pytest.fixture(scope="module")
def embedder(tiny_model):
    return Embedder.load(str(tiny_model), batch_size=8)


def test_poolings_by_hand():
    h0 = torch.zeros(1, 3, 2)
    h1 = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    h2 = torch.tensor([[[5.0, 0.0], [1.0, 8.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    states = (h0, h1, h2)
    assert pool_windows(states, mask, "cls").tolist() == [[5.0, 0.0]]
    assert pool_windows(states, mask, "mean").tolist() == [[3.0, 4.0]]
    assert pool_windows(states, mask, "max").tolist() == [[5.0, 8.0]]
    torch.testing.assert_close(pool_windows(states, mask, "mean_sqrt_len"), torch.tensor([[6.0, 8.0]]) / 2**0.5)
    # first transformer layer (h1) and last (h2), averaged, then mean over real tokens
    assert pool_windows(states, mask, "first-last-avg").tolist() == [[2.5, 3.5]]


def test_embedding_matches_a_plain_forward(embedder):
    text = "球队比赛冠军"
    (ours,) = list(embedder.embed([text], PoolingSpec("mean")))
    enc = embedder.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        reference = embedder.model(**enc).last_hidden_state.mean(1)[0]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_long_text_is_windowed_not_cut_and_order_kept(embedder):
    long_a, long_b = SPORT * 10, MONEY * 10  # ~250 tokens each, the tiny model has 64 positions
    texts = ["股票", long_a, "", long_b, "球队"]
    vectors = list(embedder.embed(texts, PoolingSpec("mean")))
    assert len(vectors) == 5
    # the long text's vector depends on its tail, which a truncating embedder would drop
    (cut,) = list(embedder.embed([long_a[:60]], PoolingSpec("mean")))
    assert not torch.allclose(vectors[1], cut)
    singles = [next(iter(embedder.embed([t], PoolingSpec("mean")))) for t in texts]
    for batched, single in zip(vectors, singles):
        torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8)) + 3.0
    w = Whitening.fit(x)
    y = w.apply(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(8), atol=1e-3)
    assert Whitening.fit(x, keep=3).apply(torch.from_numpy(x).float()).shape == (500, 3)
    with pytest.raises(BertkitError, match="more sentences than dimensions"):
        Whitening.fit(x[:8])


def test_parse_pooling_errors():
    assert parse_pooling("whitening-16").keep == 16
    for bad in ("avg", "whitening-x", "whitening-0"):
        with pytest.raises(BertkitError):
            parse_pooling(bad)
    assert parse_pooling("flow", "last2avg") == PoolingSpec("last2avg", flow=True)


def test_saved_pipeline_loads_in_sentence_transformers(tmp_path, embedder):
    import sentence_transformers as st
    rng = np.random.default_rng(1)
    pool = SPORT + MONEY
    texts = ["".join(rng.choice(list(pool), size=rng.integers(4, 15))) for _ in range(80)]
    spec = PoolingSpec("first-last-avg", whiten=True, keep=16)
    vectors = torch.stack([v["first-last-avg"] for v in embedder.embed_many(texts, ["first-last-avg"])]).numpy()
    whitening = Whitening.fit(vectors, 16)
    save_pipeline(embedder.model, embedder.tokenizer, embedder.encoder.max_length, spec, whitening, tmp_path / "st")
    model = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    theirs = model.encode(texts[:5], convert_to_numpy=True)
    reloaded = Embedder.load(str(tmp_path / "st"))
    assert reloaded.saved_spec == spec
    ours = torch.stack(list(reloaded.embed(texts[:5], spec))).numpy()
    assert theirs.shape == (5, 16)
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4)


def test_a_stream_is_embedded_one_window_at_a_time(embedder):
    """Memory stays flat on any input size: embed() reads at most one window of texts (4096) ahead
    of what it has yielded, and keeps no vector it has yielded."""
    import gc
    import weakref

    pulled = 0

    def stream(n):
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield "球队比赛" if i % 2 else "股票基金"

    fast = Embedder.load(str(embedder.path), batch_size=512)
    first = []
    for k, vector in enumerate(fast.embed(stream(10_000), PoolingSpec("mean")), 1):
        assert pulled - k < 4096, f"read {pulled} texts to yield {k}"
        if k <= 3:
            first.append(weakref.ref(vector))
        if k == 5000:  # into the second window: the first window's vectors are gone
            del vector
            gc.collect()
            assert all(ref() is None for ref in first)
    assert k == pulled == 10_000


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_stream(embedder):
    def stream(n):
        for i in range(n):
            yield "球队比赛" if i % 2 else "股票基金"

    def rss_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    fast = Embedder.load(str(embedder.path), batch_size=512)
    count = 0
    for _ in fast.embed(stream(20_000), PoolingSpec("mean")):  # warm up allocators and caches
        count += 1
    before = rss_mib()
    for _ in fast.embed(stream(1_000_000), PoolingSpec("mean")):
        count += 1
    assert count == 1_020_000
    assert rss_mib() - before < 100, "peak RSS grew with the input size"


def test_cli_embed_outputs_and_errors(tmp_path, tiny_model):
    text = "球队比赛\n\n股票基金\n"
    proc = cli("embed", "-", "-m", str(tiny_model), "--pooling", "max", input=text.encode(), check=True)
    rows = proc.stdout.decode().splitlines()
    assert len(rows) == 3 and all(len(r.split("\t")) == 32 for r in rows)
    out = tmp_path / "e.npy"
    cli("embed", "-", "-m", str(tiny_model), "-o", str(out), "--normalize", "--precision", "int8",
            input=text.encode(), check=True)
    array = np.load(out)
    assert array.shape == (3, 32) and array.dtype == np.int8
    jl = tmp_path / "e.jsonl"
    cli("embed", "-", "-m", str(tiny_model), "-o", str(jl), "--precision", "binary", input=text.encode(), check=True)
    assert [len(json.loads(l)) for l in jl.read_text().splitlines()] == [4, 4, 4]
    for args, fragment in [
        (["--pooling", "avg"], "unknown pooling"),
        (["--pooling", "whitening"], "needs a fitted transform"),
        (["--precision", "int8"], "needs --normalize"),
    ]:
        bad = cli("embed", "-", "-m", str(tiny_model), *args, input=text.encode())
        assert bad.returncode == 1 and fragment in bad.stderr.decode() and "Traceback" not in bad.stderr.decode()
    few = tmp_path / "few.txt"
    few.write_text("球队\n股票\n" * 5, encoding="utf-8")  # 10 sentences, 32 dimensions
    bad = cli("embed", "--fit", str(few), "-m", str(tiny_model), "--pooling", "whitening", "-o", str(tmp_path / "w"))
    assert bad.returncode == 1 and "more sentences than dimensions" in bad.stderr.decode()
    bad = cli("embed", "-", "-m", str(tiny_model), input=b"ok\n\xff\xfe\n")
    assert bad.returncode == 1 and "<stdin>:2: invalid UTF-8" in bad.stderr.decode()
