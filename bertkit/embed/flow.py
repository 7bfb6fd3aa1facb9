"""BERT-flow: a normalising flow that maps pooled BERT vectors to an isotropic Gaussian.

Li et al., "On the Sentence Embeddings from Pre-trained Language Models", EMNLP 2020, section 4:
the encoder stays frozen; a Glow flow (Kingma & Dhariwal 2018, section 3: actnorm, invertible
1x1 convolution, affine coupling) is trained by maximum likelihood on the pooled sentence vectors
of unlabelled text, and the latent z = f(u) is the sentence embedding.

Deviations, and why:
- A vector is not an image, so Glow's 1x1 convolution is a d x d invertible linear map (LU
  parametrised as in Glow section 3.2, so its log-determinant costs O(d)), and there is no
  multi-scale squeeze/split: K flat steps.  BERT-flow's code reshapes the vector to a 1x1 image,
  where its convolutions act exactly as these linear maps.
- Training runs through bertkit's shared loop (AdamW, warmup, checkpoints, --resume): :mod:`.task`.

Saved as a sentence-transformers module ``bertkit.embed.flow.SentenceFlow`` (``config.json`` +
``model.safetensors``).  sentence-transformers 6 imports a module class from outside its own
package when the caller opts in to remote code, even from an installed package like this one; the
whitening pipelines need no such flag (they are plain ``Dense`` modules).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..core.errors import BertkitError
from ..core.files import write_json_atomic
from ..core.weights import save_tensors


class ActNorm(nn.Module):
    """Per-dimension affine map initialised from the first batch to zero mean, unit variance."""

    def __init__(self, dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def forward(self, x):
        if not self.initialized and self.training:
            with torch.no_grad():
                self.bias.copy_(-x.mean(0))
                self.log_scale.copy_(-torch.log(x.std(0) + 1e-6))
                self.initialized.fill_(1)
        return (x + self.bias) * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])


class InvertibleLinear(nn.Module):
    """W = P L (U + diag(sign * exp(log_s))): log|det W| = sum(log_s)."""

    def __init__(self, dim: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim))
        p, lower, upper = torch.linalg.lu(q)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(torch.diagonal(upper)))
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(torch.diagonal(upper))))

    def weight(self):
        eye = torch.eye(self.lower.shape[0], device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x):
        return x @ self.weight().T, self.log_s.sum().expand(x.shape[0])


class AffineCoupling(nn.Module):
    """Half the dimensions scale and shift the other half (Glow's sigmoid-scaled coupling)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.half = dim // 2
        self.net = nn.Sequential(nn.Linear(self.half, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * (dim - self.half)))
        nn.init.zeros_(self.net[-1].weight)  # start as the identity, as Glow does
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        xa, xb = x[:, : self.half], x[:, self.half :]
        shift, raw = self.net(xa).chunk(2, dim=-1)
        scale = torch.sigmoid(raw + 2.0)
        return torch.cat([xa, (xb + shift) * scale], dim=-1), torch.log(scale).sum(-1)


class Glow(nn.Module):
    def __init__(self, dim: int, steps: int = 6, hidden: int = 64):
        super().__init__()
        if dim < 2:
            raise BertkitError("a flow needs vectors of at least 2 dimensions")
        self.dim, self.steps, self.hidden = dim, steps, hidden
        self.layers = nn.ModuleList()
        for _ in range(steps):
            self.layers.extend([ActNorm(dim), InvertibleLinear(dim), AffineCoupling(dim, hidden)])

    def forward(self, x):
        logdet = torch.zeros(x.shape[0], device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def nll(self, x):
        """Negative log-likelihood in nats per dimension (the training loss)."""
        z, logdet = self(x)
        log_pz = -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return -(log_pz + logdet).mean() / self.dim

def save_flow(flow: Glow, directory: Path) -> None:
    write_json_atomic(Path(directory) / "config.json", {"dim": flow.dim, "steps": flow.steps, "hidden": flow.hidden})
    save_tensors({k: v.contiguous() for k, v in flow.state_dict().items()}, Path(directory) / "model.safetensors")


def load_flow(directory: Path) -> Glow:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        flow = Glow(config["dim"], config["steps"], config["hidden"])
        flow.load_state_dict(load_file(str(directory / "model.safetensors")))
    except Exception as exc:
        raise BertkitError(f"cannot load the flow in {directory}: {str(exc).splitlines()[0]}") from None
    return flow.eval()


class SentenceFlow(nn.Module):
    """The flow as a sentence-transformers module: sentence_embedding -> z."""

    def __init__(self, flow: Glow):
        super().__init__()
        self.flow = flow

    def forward(self, features: dict) -> dict:
        z, _ = self.flow(features["sentence_embedding"])
        features["sentence_embedding"] = z
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.flow.dim

    def save(self, output_path: str, *args, **kwargs) -> None:
        save_flow(self.flow, Path(output_path))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> "SentenceFlow":
        return cls(load_flow(Path(model_name_or_path) / subfolder))
