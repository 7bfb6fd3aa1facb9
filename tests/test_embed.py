import json
import resource

import numpy as np
import pytest
import torch

from bertkit.embed.model import PoolingSpec, Whitening, parse_pooling, pool_windows
from bertkit.embed.pipeline import save_pipeline
from bertkit.embed.runner import Embedder
from bertkit.core.errors import BertkitError
from conftest import MONEY, SPORT, cli, synthetic_news


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
    assert Whitening.fit(x[:8]).matrix.shape == (8, 8)  # a too-small corpus fails in the runner, before encoding


def test_whitening_k_fits_on_fewer_sentences_than_dimensions():
    """Su et al.'s whitening-K needs K + 1 sentences, not the hidden size + 1: on 20 sentences in
    32 dimensions the covariance has rank 19, and its top 8 directions whiten exactly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 32)) @ rng.normal(size=(32, 32))
    y = Whitening.fit(x, keep=8).apply(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(np.cov(y.T), np.eye(8), atol=1e-3)
    assert Whitening.fit(x[:9], keep=8).matrix.shape == (32, 8)  # K + 1 is enough
    repeated = np.repeat(x[:5], 10, axis=0)  # 50 sentences, 5 different: 4 directions of variance
    w = Whitening.fit(repeated, keep=8)  # the other 4 map to 0, never divided by a zero variance
    assert np.isfinite(w.matrix).all() and not w.matrix[:, 4:].any()
    y = w.apply(torch.from_numpy(repeated).float()).double().numpy()
    np.testing.assert_allclose(np.cov(y[:, :4].T), np.eye(4), atol=1e-3)


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
    assert bad.returncode == 1 and "whitening needs more than 32 sentences to fit" in bad.stderr.decode()
    bad = cli("embed", "-", "-m", str(tiny_model), input=b"ok\n\xff\xfe\n")
    assert bad.returncode == 1 and "<stdin>:2: invalid UTF-8" in bad.stderr.decode()


def _corpus(path, n: int, seed: int = 3):
    """``n`` different sentences, one a line, with blank lines between (not counted)."""
    path.write_text("\n\n".join(text for _, text in synthetic_news(n, seed)) + "\n", encoding="utf-8")
    return path


def test_cli_fits_whitening_k_on_fewer_sentences_than_dimensions(tmp_path, tiny_model):
    corpus = _corpus(tmp_path / "small.txt", 15)  # 29 lines, 15 sentences; the tiny model has 32 dimensions
    cli("embed", "--fit", str(corpus), "-m", str(tiny_model), "--pooling", "whitening-8", "-o", str(tmp_path / "w"),
        check=True)
    proc = cli("embed", "-", "-m", str(tmp_path / "w"), input="球队比赛\n股票基金\n".encode(), check=True)
    rows = [[float(x) for x in row.split("\t")] for row in proc.stdout.decode().splitlines()]
    assert len(rows) == 2 and all(len(r) == 8 and all(np.isfinite(r)) for r in rows)


def test_too_small_corpus_fails_before_encoding(tmp_path, tiny_model, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before checking the corpus size")

    monkeypatch.setattr(Embedder, "embed_many", no_encoding)
    corpus = _corpus(tmp_path / "small.txt", 8)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("球队\t股票\t1.0\n", encoding="utf-8")
    for args, message in [
        (["--fit", str(corpus), "--pooling", "whitening-8", "-o", str(tmp_path / "w")], "whitening-8 needs more than 8"),
        (["--fit", str(corpus), "--pooling", "flow", "-o", str(tmp_path / "w")], "flow needs at least 64"),
        (["eval", str(pairs), "--fit", str(corpus), "--pooling", "whitening"], "whitening needs more than 32"),
    ]:
        bad = cli(*(args if args[0] == "eval" else ["embed", *args]), "-m", str(tiny_model))
        assert bad.returncode == 1, bad.stderr.decode()
        assert f"{message} sentences to fit; {corpus} has 8" in bad.stderr.decode()
        assert "Traceback" not in bad.stderr.decode()


def test_all_poolings_skips_what_the_corpus_cannot_fit_and_scores_the_rest(tmp_path, tiny_model):
    corpus = _corpus(tmp_path / "fit.txt", 40)  # whitening fits (> 32); flow needs 64; 256 > 32 dimensions
    texts = [text for _, text in synthetic_news(12, 5)]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\t{i % 5}\n" for i, (a, b) in enumerate(zip(texts[::2], texts[1::2]))),
                     encoding="utf-8")
    proc = cli("eval", str(pairs), "-m", str(tiny_model), "--all-poolings", "--fit", str(corpus), check=True)
    result = json.loads(proc.stdout.decode())
    assert result.pop("skipped") == {
        "whitening-256": "keeps 256 dimensions; the model has only 32",
        "flow": f"needs at least 64 sentences to fit; {corpus} has 40",
    }
    assert set(result) == {"cls", "mean", "max", "mean_sqrt_len", "first-last-avg", "last2avg", "whitening"}
    assert all(isinstance(v, float) for v in result.values())
    assert f"skipped flow: needs at least 64 sentences to fit; {corpus} has 40" in proc.stderr.decode()
