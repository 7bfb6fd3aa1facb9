import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bertkit.core.errors import BertkitError
from bertkit.training.recompute import POLICIES, StepProfile, apply_recompute, choose, parse_size, plan, profile_policies


def tiny_classifier(layers=4, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    return BertForSequenceClassification(config).train()


def grads_of(model, batch, seed=123):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_and_recomputed(model, batch, policy):
    """Gradients of one step before and after ``apply_recompute(model, policy)``, same dropout."""
    reference = grads_of(model, batch)
    apply_recompute(model, policy, k=2)
    got = grads_of(model, batch)
    assert reference.keys() == got.keys()
    return reference, got


def assert_same_gradients(got, reference, rtol=1e-5, atol=1e-6):
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 18:] = 0  # padding exercises the attention mask path
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_gradients_equal_without_recompute(policy, batch):
    model = tiny_classifier()
    reference, got = reference_and_recomputed(model, batch, policy)
    assert_same_gradients(got, reference)
    # and dropout really was on: another seed gives other gradients
    assert not torch.allclose(grads_of(model, batch, seed=7)["classifier.weight"], reference["classifier.weight"])


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_frozen_embeddings_give_the_reference_gradients(policy, batch):
    """With the embeddings frozen no input of a checkpoint needs a gradient; the layers' gradients
    must still be those without recomputation (the reentrant variant would give None)."""
    model = tiny_classifier()
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    reference, got = reference_and_recomputed(model, batch, policy)
    assert len([n for n in got if ".layer.0." in n]) == 16
    assert_same_gradients(got, reference)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_bf16_autocast_matches_its_own_reference(policy, batch):
    model = tiny_classifier()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, got = reference_and_recomputed(model, batch, policy)
    # recomputation repeats the same bf16 arithmetic: equal up to kernel-order rounding
    assert_same_gradients(got, reference, rtol=1e-4)


def test_plan_keeps_last_layer_and_uses_sqrt_segments():
    assert [(s.start, s.end, s.mode) for s in plan("full", 3)] == [(0, 1, "full"), (1, 2, "full"), (2, 3, "keep")]
    segs = plan("every-k", 12)  # k = ceil(sqrt(12)) = 4 over the first 11 layers
    assert [(s.start, s.end) for s in segs] == [(0, 4), (4, 8), (8, 11), (11, 12)]
    with pytest.raises(BertkitError):
        plan("sometimes", 12)


def test_recompute_saves_memory_and_auto_picks_fastest_that_fits(batch):
    model = tiny_classifier(layers=6)
    long_batch = {"input_ids": torch.randint(5, 120, (8, 64)), "labels": torch.zeros(8, dtype=torch.long)}

    def make_step(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.0)

        def step():
            m(**long_batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)

        return step

    profiles = {p.policy: p for p in profile_policies(model, make_step, policies=("none", "full"), timed_steps=1)}
    assert profiles["full"].peak_bytes < 0.6 * profiles["none"].peak_bytes
    budget = (profiles["full"].peak_bytes + profiles["none"].peak_bytes) // 2
    assert choose(list(profiles.values()), budget).policy == "full"
    assert choose(list(profiles.values()), profiles["none"].peak_bytes).policy == min(
        profiles.values(), key=lambda p: p.seconds).policy
    with pytest.raises(BertkitError, match="no recompute policy fits"):
        choose(list(profiles.values()), profiles["full"].peak_bytes // 2)


def test_choose_prefers_speed_among_fitting():
    profiles = [StepProfile("none", 100, 1.0), StepProfile("selective", 60, 1.1), StepProfile("full", 20, 1.3)]
    assert choose(profiles, 70).policy == "selective"
    assert choose(profiles, 1000).policy == "none"


def test_parse_size():
    assert parse_size("900M") == 900 * 2**20
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("2g") == 2 * 2**30
    assert parse_size("4096") == 4096
    with pytest.raises(BertkitError):
        parse_size("lots")


def test_cli_auto_prints_table_and_trains(tmp_path, tiny_model, news_data):
    from conftest import cli

    train, dev = map(str, news_data)
    args = ["train", train, "-m", str(tiny_model), "--max-steps", "2", "--batch-size", "8", "--recompute", "auto"]
    proc = cli(*args, "--max-memory", "1G", "-o", str(tmp_path / "a"), check=True)
    err = proc.stderr.decode()
    assert "recompute policies" in err and "activation recomputation:" in err and "USDT" not in err
    assert (tmp_path / "a" / "model.safetensors").exists()
    tight = cli(*args, "--max-memory", "2K", "-o", str(tmp_path / "b"))
    assert tight.returncode == 1 and "no recompute policy fits" in tight.stderr.decode()
    assert "Traceback" not in tight.stderr.decode()
    found = cli("train", train, "-m", str(tiny_model), "--max-steps", "1", "--recompute", "full",
                    "--find-batch-size", "--max-memory", "300K", "-o", str(tmp_path / "c"), check=True)
    assert "--find-batch-size:" in found.stderr.decode()


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_per_layer_outputs_equal_with_recompute(policy, batch):
    """Every layer's hidden states, first-last-avg embeddings and the gradients through a loss on
    all of them are the same with and without recomputation (early-exit students and the layer
    poolings read them)."""
    from bertkit.embed.model import pool_windows

    def run(model, seed=5):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same dropout masks
        out = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        assert out.hidden_states is not None and len(out.hidden_states) == model.config.num_hidden_layers + 1
        sum(h.pow(2).mean() * (i + 1) for i, h in enumerate(out.hidden_states)).backward()
        pooled = pool_windows(out.hidden_states, batch["attention_mask"], "first-last-avg")
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return [h.detach() for h in out.hidden_states], pooled.detach(), grads

    model = tiny_classifier()
    states, pooled, grads = run(model)
    apply_recompute(model, policy, k=2)
    states_r, pooled_r, grads_r = run(model)
    for i, (a, b) in enumerate(zip(states, states_r)):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"layer {i}")
    torch.testing.assert_close(pooled_r, pooled, rtol=0, atol=0)
    assert grads.keys() == grads_r.keys()
    for name in grads:
        torch.testing.assert_close(grads_r[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
