"""Compression stages (bertkit/compress) on a tiny random BERT classifier: vocabulary pruning keeps
tokenizer ids and embedding rows consistent; heads and FFN neurons are really removed (shapes,
exact parameter counts, FLOPs) and the pruned model computes what the gated unpruned one does;
importance finds a dead head; magnitude pruning and the bitmask storage are exact; 8-bit weights
stay close to float32 and shrink the files; the lean inference forward computes what transformers'
does, bit for bit; a compressed directory round-trips bit for bit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from bertkit.compress import factorize, inference, quantize, sparse, structured, vocab
from bertkit.compress.model import ARCHITECTURE, load_compressed, parameter_count, save_compressed, size_on_disk
from bertkit.core import modelio
from bertkit.core.errors import BertkitError
from bertkit.core.flops import flop_counter
from bertkit.core.vocab import SPECIAL_TOKENS, make_tokenizer
from conftest import FILLER, MONEY, SPORT, synthetic_news, tiny_vocab

HIDDEN, HEADS, WIDTH, LAYERS = 32, 4, 64, 2
HEAD = HIDDEN // HEADS


def tiny_classifier(seed: int = 0):
    """A 2-layer, 32-wide BERT classifier with 4 heads of 8 and 3 labels over conftest's vocab;
    weights drawn wider than BERT's 0.02 so the logits differ enough to compare."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(tiny_vocab())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=WIDTH, max_position_embeddings=64, num_labels=3, initializer_range=0.2,
                        id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # BERT starts biases at 0: give them values, so that zeros mean pruning
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model, tokenizer


def batches(tokenizer, n: int = 12, size: int = 4, seed: int = 1) -> list[dict]:
    rows = synthetic_news(n, seed)
    out = []
    for i in range(0, n, size):
        chunk = rows[i : i + size]
        enc = tokenizer([t for _, t in chunk], padding=True, return_tensors="pt")
        out.append({**enc, "labels": torch.tensor([0 if label == "sports" else 1 for label, _ in chunk])})
    return out


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs(batch)).logits


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- vocabulary


def test_vocabulary_pruning_keeps_tokenizer_ids_and_embedding_rows_consistent(tmp_path):
    model, tokenizer = tiny_classifier()
    corpus = [SPORT[:10], SPORT[5:] + FILLER[:4]]
    text = SPORT[2:9] + FILLER[1]  # only tokens the corpus has
    old_batch = tokenizer([text], return_tensors="pt")
    before = logits(model, old_batch)
    old_rows = model.get_input_embeddings().weight.detach().clone()

    new_tokenizer, record = vocab.prune_vocabulary(model, tokenizer, corpus)
    used = set(SPORT + FILLER[:4])
    assert set(new_tokenizer.get_vocab()) == set(SPECIAL_TOKENS) | used
    assert record == {"stage": "vocab", "kept": len(SPECIAL_TOKENS) + len(used), "of": len(tokenizer), "min_count": 1}
    rows = model.get_input_embeddings().weight
    assert rows.shape == (len(new_tokenizer), HIDDEN) and model.config.vocab_size == len(new_tokenizer)
    for token, new_id in new_tokenizer.get_vocab().items():  # each kept token's row moved with its id
        assert torch.equal(rows[new_id], old_rows[tokenizer.convert_tokens_to_ids(token)]), token
    assert new_tokenizer.convert_ids_to_tokens(model.config.pad_token_id) == "[PAD]"
    new_batch = new_tokenizer([text], return_tensors="pt")
    assert new_batch["input_ids"].tolist() != old_batch["input_ids"].tolist()  # the ids did change ...
    assert torch.equal(logits(model, new_batch), before)  # ... and the model computes the same
    assert new_tokenizer.tokenize(MONEY[0] + SPORT[0]) == ["[UNK]", SPORT[0]]  # a pruned token is unknown

    # vocabulary pruning alone stays in the Hugging Face format: transformers loads it by itself
    out = save_compressed(model, new_tokenizer, tmp_path / "vocab", [record])
    manifest = modelio.Manifest.read(out)
    assert manifest.architecture == modelio.TRANSFORMERS and manifest.config["compression"]["huggingface_format"]
    plain = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    assert torch.equal(logits(plain, new_batch), before)


# ---------------------------------------------------------------- heads and FFN neurons


def test_removing_heads_and_neurons_shrinks_the_layers_by_the_exact_parameter_count():
    model, tokenizer = tiny_classifier()
    batch = batches(tokenizer)[0]
    before_params = n_params(model)
    with flop_counter() as counter:
        logits(model, batch)
    before_flops = counter.get_total_flops()

    structured.prune_heads(model, [[0, 2, 3], [1]])
    structured.prune_neurons(model, [range(40), range(54, 64)])
    layer0, layer1 = model.bert.encoder.layer
    assert layer0.attention.self.query.weight.shape == (3 * HEAD, HIDDEN)
    assert layer0.attention.self.value.bias.shape == (3 * HEAD,)
    assert layer0.attention.output.dense.weight.shape == (HIDDEN, 3 * HEAD)
    assert layer1.attention.self.key.weight.shape == (HEAD, HIDDEN)
    assert layer0.intermediate.dense.weight.shape == (40, HIDDEN) and layer0.output.dense.weight.shape == (HIDDEN, 40)
    assert layer1.intermediate.dense.weight.shape == (10, HIDDEN) and layer1.output.dense.weight.shape == (HIDDEN, 10)
    assert structured.layer_shapes(model) == {"heads": [3, 1], "intermediate": [40, 10]}
    per_head = 3 * (HIDDEN * HEAD + HEAD) + HIDDEN * HEAD  # q, k, v rows with biases; attention-output columns
    per_neuron = HIDDEN + 1 + HIDDEN  # FFN-in row with bias; FFN-out column
    assert before_params - n_params(model) == 4 * per_head + (24 + 54) * per_neuron
    with flop_counter() as counter:
        out = logits(model, batch)
    assert out.shape == (4, 3) and counter.get_total_flops() < 0.6 * before_flops  # smaller matrices: less work

    with pytest.raises(BertkitError, match="at least one"):
        structured.prune_heads(model, [[], [0]])
    with pytest.raises(BertkitError, match="do not fit"):
        structured.prune_heads(model, [[0, 3], [0]])  # layer 0 has heads 0..2 now


def test_the_pruned_model_computes_what_the_gated_unpruned_model_computes():
    model, tokenizer = tiny_classifier()
    batch = batches(tokenizer)[0]
    full = copy.deepcopy(model)
    keep_heads, keep_neurons = [[1, 3], [0, 1, 2]], [list(range(0, 64, 2)), list(range(50))]
    structured.prune_heads(model, keep_heads)
    structured.prune_neurons(model, keep_neurons)
    head_gates = [torch.tensor([float(h in kept) for h in range(HEADS)]) for kept in keep_heads]
    neuron_gates = [torch.tensor([float(i in kept) for i in range(WIDTH)]) for kept in keep_neurons]
    with structured.gated(full, head_gates, neuron_gates):
        gated = logits(full, batch)
    assert not torch.allclose(logits(full, batch), gated, atol=1e-3)  # the gates matter ...
    torch.testing.assert_close(logits(model, batch), gated, atol=1e-5, rtol=1e-5)  # ... and pruning is the same


def test_importance_scores_a_dead_head_and_a_dead_neuron_zero_and_select_removes_them_first():
    model, tokenizer = tiny_classifier()
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():  # head 2 of layer 1 outputs nothing; neither does FFN neuron 5 of layer 0
        layer.attention.self.value.weight[2 * HEAD : 3 * HEAD] = 0
        layer.attention.self.value.bias[2 * HEAD : 3 * HEAD] = 0
        model.bert.encoder.layer[0].intermediate.dense.weight[5] = 0
        model.bert.encoder.layer[0].intermediate.dense.bias[5] = 0
    scores = structured.importance(model, batches(tokenizer))
    assert [s.shape for s in scores.heads] == [(HEADS,), (HEADS,)] and [s.shape for s in scores.neurons] == [(WIDTH,)] * 2
    assert scores.heads[1][2] == 0 and (scores.heads[1][[0, 1, 3]] > 0).all() and (scores.heads[0] > 0).all()
    assert scores.neurons[0][5] == 0 and int((scores.neurons[0] > 0).sum()) == WIDTH - 1
    assert structured.select(scores.heads, 1 / 8) == [[0, 1, 2, 3], [0, 1, 3]]  # 1 head of 8, the dead one
    assert 5 not in structured.select(scores.neurons, 1 / 128)[0]
    assert structured.select(scores.heads, 1.0) == [[int(scores.heads[0].argmax())], [int(scores.heads[1].argmax())]]
    assert [len(k) for k in structured.select(scores.neurons, 0.25, per_layer=True)] == [48, 48]
    assert model.training is False and all(p.grad is None for p in model.parameters())

    record = structured.prune_structure(model, batches(tokenizer), heads=0.25, neurons=0.5)
    assert 2 in record["removed_heads"].get("1", [])  # the dead head goes
    assert sum(record["heads"]) == 6 and sum(record["intermediate"]) == WIDTH
    assert structured.layer_shapes(model) == {"heads": record["heads"], "intermediate": record["intermediate"]}


def test_distillation_loss_is_hintons_softened_kl_and_trains_the_student_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    assert structured.distillation_loss(teacher.detach(), teacher.detach(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    t = 2.0
    p, log_q = (teacher / t).softmax(-1), (student / t).log_softmax(-1)
    expected = t * t * (p * (p.log() - log_q)).sum(-1).mean()
    loss = structured.distillation_loss(student, teacher, t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    labels = torch.tensor([0, 1, 2, 0, 1])
    mixed = structured.distillation_loss(student, teacher, t, labels, alpha=0.25)
    ce = torch.nn.functional.cross_entropy(student, labels)
    assert mixed.item() == pytest.approx(0.25 * expected.item() + 0.75 * ce.item(), rel=1e-5)
    mixed.backward()
    assert student.grad is not None and teacher.grad is None

    model, tokenizer = tiny_classifier()
    full = copy.deepcopy(model)
    structured.prune_heads(model, [[0], [0, 1]])
    objective = structured.distillation_objective(full, temperature=2.0)
    loss = objective(model.train(), batches(tokenizer)[0])
    loss.backward()
    assert loss.item() > 0 and model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in full.parameters())


# ---------------------------------------------------------------- sparse


def test_magnitude_pruning_zeroes_exactly_the_smallest_weights_and_keeps_them_zero():
    model, tokenizer = tiny_classifier()
    original = {n: m.weight.detach().clone() for n, m in sparse.encoder_linears(model).items()}
    assert len(original) == 6 * LAYERS
    record = sparse.magnitude_prune(model, 0.6)
    assert record["measured"] == pytest.approx(0.6, abs=1e-3)
    for name, linear in sparse.encoder_linears(model).items():
        w, old = linear.weight.detach(), original[name]
        zero = w == 0
        assert int(zero.sum()) == round(0.6 * w.numel()) and not w[zero].signbit().any()  # +0.0, not -0.0
        assert torch.equal(w[~zero], old[~zero]) and old[zero].abs().max() <= old[~zero].abs().min()
    assert model.classifier.weight.ne(0).all()  # the classifier is left dense

    hook = sparse.KeepSparse(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # what an optimizer step does to pruned weights
    hook.after_optimizer_step(None, model, 1)
    assert sparse.sparsity_of(model) == pytest.approx(0.6, abs=1e-3)



def test_movement_scores_are_minus_gradient_times_weight_and_prune_to_the_target():
    model, tokenizer = tiny_classifier()
    batch = batches(tokenizer)[0]
    scores = sparse.movement_scores(model, [batch])
    name = "bert.encoder.layer.1.output.dense"
    w = model.get_submodule(name).weight
    loss = torch.nn.functional.cross_entropy(model(**inputs(batch)).logits, batch["labels"])
    (grad,) = torch.autograd.grad(loss, [w])
    torch.testing.assert_close(scores[name], -grad * w.detach())
    kept = scores[name] > scores[name].flatten().kthvalue(round(0.8 * w.numel())).values
    record = sparse.movement_prune(model, scores, 0.8)
    assert record["measured"] == pytest.approx(0.8, abs=1e-3)
    assert torch.equal(w.detach() != 0, kept)  # the weights moving away from zero stay


def test_sparse_storage_round_trips_every_bit():
    torch.manual_seed(0)
    dense = torch.randn(13, 7)
    dense[dense.abs() < 0.8] = 0
    dense[0, 1] = float("nan")  # NaN comes back as it was
    codes, _ = quantize.quantize_rows(torch.where(torch.rand(9, 5) > 0.7, torch.randn(9, 5), 0.0), "int8")
    fp8, _ = quantize.quantize_rows(torch.where(torch.rand(3, 11) > 0.5, torch.randn(3, 11), 0.0), "fp8")
    for tensor in (dense, codes, fp8, torch.zeros(3, 3), torch.tensor([1.5, 0.0, 2.0])):
        packed = sparse.pack(tensor)
        assert packed["mask"].numel() == (tensor.numel() + 7) // 8
        back = sparse.unpack(packed["mask"], packed["values"], packed["shape"])
        assert back.dtype == tensor.dtype and back.shape == tensor.shape
        assert torch.equal(back.view(torch.uint8), tensor.contiguous().view(torch.uint8))
    assert sparse.packed_bytes(dense) < dense.numel() * 4 and sparse.worth_packing(dense)
    signed = torch.tensor([[-0.0, 1.0], [0.0, -2.0]])  # -0.0 (what pruning by a product leaves) is a zero
    packed = sparse.pack(signed)
    assert packed["values"].tolist() == [1.0, -2.0]
    assert torch.equal(sparse.unpack(**packed).view(torch.int32), torch.tensor([[0.0, 1.0], [0.0, -2.0]]).view(torch.int32))
    assert not sparse.worth_packing(torch.randn(8, 8))
    with pytest.raises(ValueError):
        sparse.unpack(packed["mask"], packed["values"][:1], packed["shape"])


# ---------------------------------------------------------------- quantization


def test_8bit_weights_stay_close_to_float32_and_shrink_the_files(tmp_path):
    model, tokenizer = tiny_classifier()
    data = batches(tokenizer)
    weights = model.get_input_embeddings().weight.detach()
    codes, scale = quantize.quantize_rows(weights, "int8")
    assert codes.dtype == torch.int8 and (codes.float() * scale[:, None] - weights).abs().le(scale[:, None] / 2 + 1e-7).all()
    codes, scale = quantize.quantize_rows(weights, "fp8")
    assert codes.dtype == torch.float8_e4m3fn
    assert ((codes.float() * scale[:, None] - weights).abs() <= weights.abs() / 16 + scale[:, None] * 2 ** -9).all()

    save_compressed(model, tokenizer, tmp_path / "float", [])
    spread = torch.cat([logits(model, b) for b in data]).std().item()
    for fmt, tolerance in (("int8", 0.03), ("fp8", 0.08)):  # the tables alone (measured: 1.2% and 3.7%)
        small = copy.deepcopy(model)
        quantize.quantize(small, embeddings=fmt, linear=False)
        closeness = quantize.compare_outputs(model, small, data)
        assert 0 < closeness["max_abs_diff"] < tolerance * spread, closeness
    for fmt in ("int8", "fp8"):  # with int8 Linear layers (7-bit activations on x86): 11% at most, 3% on average
        small = copy.deepcopy(model)
        record = quantize.quantize(small, embeddings=fmt)
        assert isinstance(small.bert.embeddings.word_embeddings, quantize.QuantizedEmbedding)
        assert quantize.is_int8_linear(small.bert.encoder.layer[0].intermediate.dense)
        closeness = quantize.compare_outputs(model, small, data)
        assert closeness["max_abs_diff"] < 0.15 * spread and closeness["mean_abs_diff"] < 0.05 * spread, closeness
        assert closeness["agreement"] == 1.0, closeness
        out = save_compressed(small, tokenizer, tmp_path / fmt, [record])
        stored = load_file(str(out / "model.safetensors"))
        assert {t.dtype for t in stored.values() if t.dim() == 2} == {torch.int8, quantize.FORMATS[fmt][0]}
        # under 4x here: the LayerNorms, biases, a scale per 32-wide row and the file's index weigh in a tiny model
        ratio = size_on_disk(tmp_path / "float")["weights"] / size_on_disk(out)["weights"]
        assert ratio > 2.5, ratio
        assert parameter_count(small) == n_params(model)

    linear = torch.nn.Sequential(torch.nn.Linear(16, 5))
    quantize.quantize_linears(linear)
    rebuilt = quantize.int8_linear(*quantize.linear_codes(linear[0]))
    x = torch.randn(4, 16)
    assert torch.equal(rebuilt(x), linear[0](x))


def test_position_pruning_keeps_the_window_and_transformers_loads_the_result(tmp_path):
    model, tokenizer = tiny_classifier()
    data = batches(tokenizer)
    before = [logits(model, b) for b in data]
    assert max(b["input_ids"].shape[1] for b in data) <= 24
    record = vocab.prune_positions(model, 24)
    assert record == {"positions_kept": 24, "positions_of": 64}
    assert model.bert.embeddings.position_embeddings.weight.shape == (24, HIDDEN) and model.config.max_position_embeddings == 24
    for batch, expected in zip(data, before):  # every input within the window computes as before
        assert torch.allclose(logits(model, batch), expected, atol=1e-6)
    out = save_compressed(model, tokenizer, tmp_path / "p", [record])
    loaded = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    assert torch.allclose(logits(loaded, data[0]), before[0], atol=1e-6)
    assert vocab.prune_positions(model, 100)["positions_kept"] == 24  # a wider window keeps what there is


# ---------------------------------------------------------------- factorised word embeddings


def test_factorized_embeddings_are_the_tables_best_low_rank_approximation():
    model, tokenizer = tiny_classifier()
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    rows, before, rank = table.shape[0], n_params(model), 8
    record = factorize.factorize_embeddings(model, rank=rank)
    new = model.bert.embeddings.word_embeddings
    assert n_params(model) == before - rows * HIDDEN + rows * rank + rank * HIDDEN
    s = torch.linalg.svdvals(table)  # Eckart-Young: the best rank-8 error is the dropped singular values' norm
    assert float(torch.linalg.norm(new.weight.detach() - table)) == pytest.approx(float(s[rank:].pow(2).sum().sqrt()), rel=1e-4)
    assert record["energy_kept"] == pytest.approx(float(s[:rank].pow(2).sum() / s.pow(2).sum()), abs=1e-4)
    reference = copy.deepcopy(model)  # BERT with the approximated table computes what the factorised one does
    reference.bert.embeddings.word_embeddings = nn.Embedding.from_pretrained(new.weight.detach())
    for batch in batches(tokenizer):
        assert torch.allclose(logits(model, batch), logits(reference, batch), atol=1e-5)
    with pytest.raises(BertkitError, match="once, before quantizing"):
        factorize.factorize_embeddings(model, rank=4)
    with pytest.raises(BertkitError, match="--embedding-rank must be between 1 and"):
        factorize.factorize_embeddings(tiny_classifier()[0], rank=HIDDEN)


def test_weighted_factorization_minimises_the_error_of_the_rows_the_task_reads():
    model, tokenizer = tiny_classifier()
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    texts = [SPORT[:10], (SPORT[5:9], FILLER[:4])]
    counts = factorize.row_counts(tokenizer, texts, table.shape[0])
    ids = tokenizer(SPORT[:10], add_special_tokens=False)["input_ids"] + tokenizer(SPORT[5:9], add_special_tokens=False)["input_ids"]
    first = ids[0]
    assert counts[first] == 1 + ids.count(first)
    second = tokenizer(FILLER[:4], add_special_tokens=False)["input_ids"]  # the pair's second text counts too
    assert counts[second[0]] == 1 + ids.count(second[0]) + second.count(second[0])
    assert counts[tokenizer.cls_token_id] == 1 + 2 and counts[tokenizer.sep_token_id] == 1 + 3  # the pair has 2 [SEP]
    assert counts[tokenizer.unk_token_id] == 1 + ids.count(tokenizer.unk_token_id)  # unseen rows weigh 1
    weights = counts ** 2  # sharper than counts, so that the tiny table's two answers differ clearly
    plain = factorize.FactorizedEmbedding.from_embedding(nn.Embedding.from_pretrained(table), 4).weight.detach()
    record = factorize.factorize_embeddings(model, rank=4, row_weights=weights)
    ours = model.bert.embeddings.word_embeddings.weight.detach()

    def weighted_error(approx):
        return float((weights * (approx - table).pow(2).sum(1)).sum())

    s = torch.linalg.svdvals(table * weights.sqrt()[:, None])
    assert weighted_error(ours) == pytest.approx(float(s[4:].pow(2).sum()), rel=1e-3)  # the weighted optimum
    assert weighted_error(ours) < 0.9 * weighted_error(plain)
    assert record["row_weights"] == "token counts + 1"
    with pytest.raises(ValueError, match="positive numbers, one per row"):
        factorize.factorize_embeddings(tiny_classifier()[0], rank=4, row_weights=torch.zeros(table.shape[0]))


def test_a_factorized_and_quantized_directory_round_trips(tmp_path):
    model, tokenizer = tiny_classifier()
    records = [factorize.factorize_embeddings(model, rank=8), quantize.quantize(model, embeddings="int8")]
    out = save_compressed(model, tokenizer, tmp_path / "c", records)
    spec = modelio.Manifest.read(out).config["compression"]
    assert spec["factorized"] == {"bert.embeddings.word_embeddings": 8}
    assert "factorised word embeddings" in spec["why_not_huggingface"]
    stored = load_file(str(out / "model.safetensors"))
    assert stored["bert.embeddings.word_embeddings.table.codes"].shape == (len(tokenizer), 8)  # 8-bit V x E
    assert stored["bert.embeddings.word_embeddings.project.weight_int8"].shape == (HIDDEN, 8)  # int8 E -> H
    loaded, _ = load_compressed(out)
    for batch in batches(tokenizer):
        assert torch.equal(logits(loaded, batch), logits(model, batch))


# ---------------------------------------------------------------- the inference forward


def _compressed_tiny(int8: bool):
    """The tiny classifier with heads and neurons pruned and the word table factorised; ``int8``:
    int8 Linear layers and 8-bit tables too."""
    model, tokenizer = tiny_classifier()
    structured.prune_structure(model, batches(tokenizer), heads=0.25, neurons=0.5)
    factorize.factorize_embeddings(model, rank=8)
    if int8:
        quantize.quantize(model, embeddings="int8")
    return model.eval(), tokenizer


@pytest.mark.parametrize("int8", [False, True])
def test_the_inference_forward_computes_what_transformers_computes_bit_for_bit(int8):
    model, tokenizer = _compressed_tiny(int8)
    lean = inference.for_inference(copy.deepcopy(model))
    layers = lean.bert.encoder.layer
    assert all(isinstance(layer, inference.CompressedLayer) for layer in layers)
    assert isinstance(lean.bert.embeddings, inference.CompressedEmbeddings)
    heads = structured.layer_shapes(model)["heads"]
    stacked = [layer.qkv.weight() if int8 else layer.qkv.weight for layer in layers]
    assert [w.shape[0] for w in stacked] == [3 * h * HEAD for h in heads]  # query, key and value in one product
    assert parameter_count(lean) == parameter_count(model)
    for batch in batches(tokenizer):  # padded batches: the mask reaches the attention
        assert torch.equal(logits(lean, batch), logits(model, batch))
        with torch.inference_mode():
            ours = lean.bert(**inputs(batch), output_hidden_states=True).hidden_states
            theirs = model.bert(**inputs(batch), output_hidden_states=True).hidden_states
        assert len(ours) == LAYERS + 1 and all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_the_inference_forward_serves_the_early_exit_path_and_single_texts_unchanged():
    from bertkit.distill.model import EarlyExitClassifier, ExitRule

    model, tokenizer = _compressed_tiny(int8=True)
    plain = EarlyExitClassifier(model)
    lean = EarlyExitClassifier(inference.for_inference(copy.deepcopy(model)), students=copy.deepcopy(plain.students))
    batch = inputs(batches(tokenizer)[0])
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    with torch.inference_mode():  # layer by layer with bertkit's additive masks, and one unpadded text
        assert all(torch.equal(a, b) for a, b in zip(lean.all_logits(*args), plain.all_logits(*args)))
        one = tuple(t[:1, : int(batch["attention_mask"][0].sum())] for t in args)
        for rule in (ExitRule(speed=0.0), ExitRule(patience=2)):
            (p1, l1), (p2, l2) = lean.early_exit(*one, rule), plain.early_exit(*one, rule)
            assert torch.equal(p1, p2) and torch.equal(l1, l2)
        no_types = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        assert torch.equal(lean.classifier(**no_types).logits, model(**no_types).logits)


def test_a_copy_of_an_inference_model_computes_with_its_own_weights_and_training_is_refused(tmp_path):
    model, tokenizer = _compressed_tiny(int8=False)
    lean = inference.for_inference(copy.deepcopy(model))
    twin = copy.deepcopy(lean)
    batch = batches(tokenizer)[0]
    with torch.no_grad():
        twin.bert.encoder.layer[0].ffn_out.weight.mul_(-1.0)
    assert torch.equal(logits(lean, batch), logits(model, batch))
    assert not torch.equal(logits(twin, batch), logits(model, batch))
    lean.train()
    with pytest.raises(BertkitError, match="inference only"):
        lean(**inputs(batch))
    with pytest.raises(BertkitError, match="inference only"):
        modelio.save_pretrained(lean, tokenizer, tmp_path / "x")


def test_an_unfactorised_8bit_table_runs_unchanged_and_adds_no_weights():
    model, tokenizer = tiny_classifier()
    quantize.quantize(model, embeddings="int8")
    lean = inference.for_inference(copy.deepcopy(model))
    assert not [k for k in lean.state_dict() if "._words" in k or "._norm" in k]  # kernels hold no modules of their own
    for batch in batches(tokenizer):
        assert torch.equal(logits(lean, batch), logits(model, batch))


def test_stacked_int8_products_equal_the_separate_ones_exactly():
    torch.manual_seed(0)
    parts = [nn.Linear(32, n) for n in (8, 16, 8)]
    holder = nn.Sequential(*parts)
    quantize.quantize_linears(holder)
    x = torch.randn(3, 7, 32) * 3
    stacked = inference.stack_linears(list(holder))
    with torch.inference_mode():
        assert torch.equal(stacked(x), torch.cat([m(x) for m in holder], -1))
        assert torch.equal(inference.kernel(stacked)(x), stacked(x))


def test_a_model_loaded_for_inference_is_not_saved_again(tmp_path):
    model, tokenizer = _compressed_tiny(int8=True)
    loaded, _ = load_compressed(save_compressed(model, tokenizer, tmp_path / "c", []))
    assert modelio.is_inference_only(loaded)
    with pytest.raises(BertkitError, match="not saved again"):
        save_compressed(loaded, tokenizer, tmp_path / "again", [])


# ---------------------------------------------------------------- the directory


def test_a_compressed_directory_round_trips_through_save_and_load(tmp_path):
    from bertkit.classify.runner import Classifier

    model, tokenizer = tiny_classifier()
    texts = [t for _, t in synthetic_news(16, 3)]
    tokenizer, r1 = vocab.prune_vocabulary(model, tokenizer, texts)
    data = batches(tokenizer)
    r2 = structured.prune_structure(model, data, heads=0.25, neurons=0.5)
    r3 = sparse.magnitude_prune(model, 0.5)
    r4 = quantize.quantize(model, embeddings="fp8")
    out = save_compressed(model, tokenizer, tmp_path / "compressed", [r1, r2, r3, r4])

    manifest = modelio.Manifest.read(out)
    spec = manifest.config["compression"]
    assert manifest.kind == "classifier" and manifest.architecture == ARCHITECTURE
    assert [s["stage"] for s in spec["stages"]] == ["vocab", "structured", "sparse", "quantize"]
    assert not spec["huggingface_format"] and len(spec["why_not_huggingface"]) == 4
    assert spec["heads"] == r2["heads"] and spec["intermediate"] == r2["intermediate"]
    assert json.loads((out / "config.json").read_text())["model_type"] == ARCHITECTURE
    assert any(k.endswith(".sparse_mask") for k in load_file(str(out / "model.safetensors")))

    loaded, loaded_tokenizer = load_compressed(out)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    for batch in data:
        assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert parameter_count(loaded, nonzero=True) == parameter_count(model, nonzero=True)
    backbone = modelio.load_model(str(out), AutoModel)
    with torch.inference_mode():
        assert torch.equal(backbone(**inputs(data[0])).last_hidden_state, model.bert(**inputs(data[0])).last_hidden_state)
    # the classifier runner loads it like any fine-tuned classifier
    runner = Classifier.load(str(out))
    expected = list(Classifier(model, tokenizer).predict_proba(texts))
    assert all(torch.equal(a, b) for a, b in zip(runner.predict_proba(texts), expected))

    with pytest.raises(ValueError, match="does not recognize"):  # transformers refuses rather than guessing
        AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["bert.encoder.layer.0.intermediate.dense.weight_int8.sparse_values"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(BertkitError, match="cannot load model .*sparse form"):
        load_compressed(out)
    with pytest.raises(BertkitError, match="compressed model"):
        modelio.load_model(str(out), AutoModelForSequenceClassification, num_labels=5)


def test_a_quantized_model_with_exits_round_trips_and_predicts_with_the_same_exits(tmp_path):
    from bertkit.compress.exit import exit_runner, new_students, train_students
    from bertkit.classify.data import Example
    from bertkit.distill.runner import EarlyExitRunner
    from bertkit.training import TrainConfig

    model, tokenizer = tiny_classifier()
    quantize.quantize(model, embeddings="int8")
    students = new_students(model, width=8)
    runner = exit_runner(model, students, tokenizer, speed=0.99, max_length=32)
    train = [Example(t, label="a") for _, t in synthetic_news(16, 5)]
    before = copy.deepcopy(model.state_dict())
    train_students(runner, train, TrainConfig(output_dir=tmp_path / "work", epochs=1, lr=1e-2, batch_size=8))
    after = model.state_dict()  # the stage trains the students only: the compressed model is untouched
    assert all(before[k] == after[k] if not torch.is_tensor(after[k]) else torch.equal(before[k], after[k])
               for k in after if "_packed_params" not in k)
    out = save_compressed(model, tokenizer, tmp_path / "exit", [{"stage": "quantize"}, {"stage": "exit"}],
                          students=students, speed=0.99)
    manifest = modelio.Manifest.read(out)
    assert manifest.kind == "early-exit-classifier" and manifest.config["speed"] == 0.99
    assert manifest.config["student"] == {"width": 8, "heads": 2}
    loaded = EarlyExitRunner.load(str(out), max_length=32)
    texts = [t for _, t in synthetic_news(24, 6)]
    ours = list(runner.predict_with_exits(texts))
    theirs = list(loaded.predict_with_exits(texts))
    assert [layer for _, layer in ours] == [layer for _, layer in theirs]
    assert 1 in {layer for _, layer in ours}  # some leave at layer 1 (speed 0.99): the exits are used
    assert all(torch.allclose(a, b, atol=2e-3) for (a, _), (b, _) in zip(ours, theirs))  # students stored in float16


def test_the_exit_speed_stops_at_the_first_speed_that_fails_the_budget(monkeypatch):
    from bertkit.compress import exit as exit_stage

    curve = {0.0: 90.0, 0.2: 89.8, 0.4: 89.5, 0.6: 88.9, 0.8: 89.6, 0.9: 89.2}  # 0.6 fails a floor of 89.0
    monkeypatch.setattr(exit_stage, "exit_curve", lambda runner, dev, speeds, rounds, source: [
        {"speed": s, "accuracy": curve[s]} for s in reversed(speeds)])  # any order: the rule sorts
    assert exit_stage.choose_exit_speed(None, [], 89.0, speeds=list(curve))[0] == 0.4  # not 0.9, past the failure
    assert exit_stage.choose_exit_speed(None, [], 88.0, speeds=list(curve))[0] == 0.9
    assert exit_stage.choose_exit_speed(None, [], 95.0, speeds=list(curve))[0] == 0.0  # nobody leaves early


def test_stages_in_the_wrong_order_are_refused(tmp_path):
    model, tokenizer = tiny_classifier()
    quantize.quantize(model, embeddings="int8")
    with pytest.raises(BertkitError, match="before quantizing"):
        structured.prune_heads(model, [[0], [0]])
    with pytest.raises(BertkitError, match="before quantizing the embeddings"):
        vocab.prune_vocabulary(model, tokenizer, ["球队"])
    with pytest.raises(BertkitError, match="BertForSequenceClassification"):
        save_compressed(model.bert, tokenizer, tmp_path / "x", [])


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def finetuned(tiny_model, news_data, tmp_path_factory):
    from conftest import cli

    out = tmp_path_factory.mktemp("compress") / "ft"
    train, dev = news_data
    cli("train", str(train), "--dev", str(dev), "-m", str(tiny_model), "-o", str(out), "--epochs", "3", "--lr", "3e-3",
        "--batch-size", "16", check=True)
    return out


def test_compress_end_to_end_keeps_stages_within_the_budget_and_the_result_loads(finetuned, news_data, tmp_path):
    from conftest import cli

    train, dev = news_data
    out = tmp_path / "c"
    result = cli("compress", "-m", str(finetuned), "--train", str(train), "--dev", str(dev), "-o", str(out),
                 "--rounds", "1", "--batch-size", "16", "--max-loss", "100", check=True)
    report = json.loads(result.stdout)
    stages = ["vocab", "factorize", "structure", "sparse", "quantize", "exit"]
    assert [r["stage"] for r in report["stages"]] == ["fine-tuned", *stages]
    assert report["kept"] == stages  # a budget of 100 points keeps all
    sizes = [r["size_bytes"] for r in report["stages"]]
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True) and report["size_ratio"] > 3
    exit_row = report["stages"][-1]
    assert sizes[-1] > sizes[-2] and exit_row["record"]["speed"] == 0.9  # students weigh something; the fastest speed
    assert exit_row["record"]["trained"] and exit_row["record"]["student"] == {"width": 24, "heads": 2}
    assert report["stages"][3]["parameters"] < report["stages"][2]["parameters"]  # heads and neurons gone
    assert "structure" in result.stderr.decode() and not (tmp_path / "c.work").exists()
    manifest = modelio.Manifest.read(out)
    assert [s["stage"] for s in manifest.config["compression"]["stages"]] == report["kept"]
    assert manifest.kind == "early-exit-classifier" and manifest.config["speed"] == 0.9
    scores = json.loads(cli("eval", str(dev), "-m", str(out), check=True).stdout)
    assert abs(100 * scores["accuracy"] - report["dev_accuracy_compressed"]) < 1e-6
    lines = cli("predict", "-", "-m", str(out), input="比赛\n\n股票\n".encode(), check=True).stdout.decode().splitlines()
    assert len(lines) == 3


def test_a_stage_over_the_budget_is_reported_skipped_with_its_loss(finetuned, news_data, tmp_path):
    from conftest import cli

    train, dev = news_data
    out = tmp_path / "c"
    report = json.loads(cli("compress", "-m", str(finetuned), "--train", str(train), "--dev", str(dev), "-o", str(out),
                            "--stages", "sparse", "--sparsity", "0.99", "--max-steps", "1", "--max-loss", "0",
                            "--rounds", "1", check=True).stdout)
    row = report["stages"][1]
    assert row["stage"] == "sparse" and row["dev_loss"] > 0 and not row["kept"]
    assert f"{row['dev_loss']:g} points below" in row["skipped"] and report["kept"] == []
    assert modelio.Manifest.read(out).config["compression"]["stages"] == []  # the uncompressed model, saved as is


def test_compress_min_count_keeps_only_the_tokens_used_that_often(finetuned, news_data, tmp_path):
    import collections

    from transformers import AutoTokenizer

    from bertkit.classify.data import load_labelled
    from conftest import cli

    train, dev = news_data
    report = json.loads(cli("compress", "-m", str(finetuned), "--train", str(train), "--dev", str(dev), "-o",
                            str(tmp_path / "c"), "--stages", "vocab", "--min-count", "20", "--max-loss", "100",
                            "--rounds", "1", check=True).stdout)
    record = report["stages"][1]["record"]
    tokenizer = AutoTokenizer.from_pretrained(str(finetuned))
    counts = collections.Counter(i for ex in load_labelled(str(train))
                                 for i in tokenizer(ex.text, add_special_tokens=False)["input_ids"])
    often = {i for i, n in counts.items() if n >= 20 and tokenizer.convert_ids_to_tokens(i) not in SPECIAL_TOKENS}
    assert record["min_count"] == 20 and record["kept"] == len(SPECIAL_TOKENS) + len(often)
    assert len(often) < len(counts)  # some tokens were rarer than that: the option did something


@pytest.mark.parametrize("args, message", [
    (["--max-loss", "-1"], "--max-loss must be 0 or more"),
    (["--stages", "vocab,prune"], "no compression stage 'prune'"),
    (["--embeddings", "int4"], "--embeddings must be int8 or fp8"),
    (["--exit-width", "25"], "--exit-width must be even"),
    (["--min-count", "0"], "Invalid value for '--min-count'"),
])
def test_bad_compress_options_are_one_error_line(finetuned, news_data, tmp_path, args, message):
    from conftest import cli

    train, dev = news_data
    result = cli("compress", "-m", str(finetuned), "--train", str(train), "--dev", str(dev), "-o", str(tmp_path / "c"), *args)
    err = result.stderr.decode()
    assert result.returncode != 0 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err


def test_compress_refuses_a_model_that_is_not_a_fine_tuned_classifier(tiny_model, news_data, tmp_path):
    from conftest import cli

    train, dev = news_data
    result = cli("compress", "-m", str(tiny_model), "--train", str(train), "--dev", str(dev), "-o", str(tmp_path / "c"))
    err = result.stderr.decode()
    assert result.returncode == 1 and err.startswith("error: ") and "not a fine-tuned classifier" in err, err
    model, tokenizer = _compressed_tiny(int8=True)  # a compressed classifier (kind classifier) is refused up front
    small = save_compressed(model, tokenizer, tmp_path / "small", [])
    result = cli("compress", "-m", str(small), "--train", str(train), "--dev", str(dev), "-o", str(tmp_path / "c"))
    err = result.stderr.decode()
    assert result.returncode == 1 and err.startswith("error: ") and err.count("\n") == 1 and "already compressed" in err, err
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("".join(f"{t}\n" for _, t in synthetic_news(8, 5)), encoding="utf-8")
    result = cli("contrast", str(sentences), "-m", str(small), "-o", str(tmp_path / "ct"))
    err = result.stderr.decode()
    assert result.returncode == 1 and err.startswith("error: ") and err.count("\n") == 1 and "inference only" in err, err


def test_recovery_distils_from_a_teacher_that_reads_the_pruned_vocabulary(finetuned, news_data, tmp_path, monkeypatch):
    """After vocabulary pruning the student's token ids are new: a teacher reading them with the
    old vocabulary would teach noise (a bug once cost 12 dev points).  The teacher given to the
    recovery must give the student's own logits before any recovery step."""
    from conftest import cli

    from bertkit.compress import task as compress_task

    seen = []

    def spy(c, inputs, stage, hooks=()):
        batch = next(compress_task._batches(c, inputs.train[:8], inputs.options, labelled=False))
        with torch.no_grad():
            seen.append(torch.allclose(inputs.teacher(**batch).logits, c.model.eval()(**batch).logits, atol=1e-5))
        return {"recovered": False}

    monkeypatch.setattr(compress_task, "_recover", spy)
    train, dev = news_data
    cli("compress", "-m", str(finetuned), "--train", str(train), "--dev", str(dev), "-o", str(tmp_path / "c"),
        "--stages", "vocab,sparse", "--sparsity", "0", "--rounds", "1", "--max-loss", "100", check=True)
    assert seen == [True]


def test_vocab_positions_and_factorize_work_on_another_wordpiece_family():
    """ELECTRA keeps BERT's WordPiece vocabulary under another attribute (``.electra``): the
    stages find its embeddings through ``base_model``; positions are cut for BERT only."""
    from transformers import ElectraConfig, ElectraForSequenceClassification

    torch.manual_seed(0)
    model = ElectraForSequenceClassification(ElectraConfig(vocab_size=40, embedding_size=32, hidden_size=32,
                                                           num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=64, max_position_embeddings=64)).eval()
    assert vocab.prune_positions(model, 16) == {"positions_kept": 64, "positions_of": 64}
    record = factorize.factorize_embeddings(model, rank=8)
    assert record["rank"] == 8 and isinstance(model.electra.embeddings.word_embeddings, factorize.FactorizedEmbedding)
