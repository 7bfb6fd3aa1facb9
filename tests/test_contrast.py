"""The contrastive objectives against hand-computed cases (issue 17's first step)."""

import math

import pytest
import torch
from torch import nn

from bertkit.contrast.model import (ProjectionHead, cosent_loss, in_batch_negatives_loss, masked_max, sg_opt_loss,
                                    simcse_loss, weight_drift)

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_sg_opt_by_hand():
    # two sentences, one frozen layer: c_1 = e1, c_2 = e2; h_1 = e1, h_2 = (e1 + e2)/sqrt2
    cls = torch.stack([E1, E2])
    pooled = torch.stack([E1, (E1 + E2)]).unsqueeze(1)
    t = 0.5
    s = 1 / math.sqrt(2)
    # sentence 1: positive cos(e1, e1) = 1, negative cos(e1, h_2) = s; sentence 2: positive s, negative 0
    expected = (-math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t)))
                - math.log(math.exp(s / t) / (math.exp(s / t) + math.exp(0.0)))) / 2
    assert sg_opt_loss(cls, pooled, t).item() == pytest.approx(expected, rel=1e-5)


def test_sg_opt_shares_every_layers_negatives():
    # two layers: sentence i's negatives are the other sentence's h at both layers
    cls = torch.stack([E1, E2])
    pooled = torch.stack([torch.stack([E1, E2]), torch.stack([E1 + E2, E1])])  # (B=2, L=2, H=2)
    t = 1.0
    c = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    rows = []
    for i in range(2):
        negs = [c(cls[i], pooled[1 - i, k]) for k in range(2)]
        for k in range(2):
            pos = c(cls[i], pooled[i, k])
            rows.append(-pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs)))
    assert sg_opt_loss(cls, pooled, t).item() == pytest.approx(sum(rows) / 4, rel=1e-5)


def test_simcse_and_in_batch_negatives_by_hand():
    a = torch.stack([E1, E2])
    b = torch.stack([E1, E1 + E2])
    s = 1 / math.sqrt(2)
    expected = (-math.log(math.exp(1 / 0.05) / (math.exp(1 / 0.05) + math.exp(s / 0.05)))
                - math.log(math.exp(s / 0.05) / (math.exp(0.0) + math.exp(s / 0.05)))) / 2
    assert simcse_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert in_batch_negatives_loss(a, b, scale=20.0).item() == pytest.approx(
        simcse_loss(a, b, temperature=1 / 20).item(), rel=1e-6)


def test_cosent_by_hand():
    first = torch.stack([E1, E1, E1])
    second = torch.stack([E1, E1 + E2, E2])  # cosines 1, s, 0
    s = 1 / math.sqrt(2)
    scores = torch.tensor([1.0, 5.0, 3.0])  # wrongly ordered: pair 2 should beat 1 and 3, 3 should beat 1
    cos = [1.0, s, 0.0]
    terms = [20 * (cos[j] - cos[i]) for i in range(3) for j in range(3) if scores[i] > scores[j]]
    expected = math.log(1 + sum(math.exp(x) for x in terms))
    assert cosent_loss(first, second, scores).item() == pytest.approx(expected, rel=1e-5)
    assert cosent_loss(first, second, torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_max_ignores_padding_and_head_and_drift():
    hidden = torch.tensor([[[1.0, -5.0], [3.0, 9.0]]])
    assert masked_max(hidden, torch.tensor([[1, 0]])).tolist() == [[1.0, -5.0]]
    assert ProjectionHead(8, width=16)(torch.randn(3, 8)).shape == (3, 16)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    assert weight_drift(a, b).item() == 0.0
    with torch.no_grad():
        a.bias += torch.tensor([3.0, 4.0])
    assert weight_drift(a, b).item() == pytest.approx(25.0)
