"""Shared fixtures: tiny random models built in the test, synthetic data, two CLI runners.

``cli(...)`` runs the real entry point (``bertkit.cli.main``: parsing, error handling, exit code)
in this process, which saves the ~4 s a new Python process spends importing torch and
transformers; ``run_cli(...)`` runs it in a new process, for the true end-to-end runs (the
console script, torchrun, environment variables read at import, a process killed mid-run).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from bertkit.core import modelio
from bertkit.core.vocab import make_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

SPORT = "球队比赛冠军进球教练联赛足篮排网胜负赛季主场客场"
MONEY = "股票基金银行利率市场投资收益债券上涨下跌指数资金"
FILLER = "的了在是我有和人这中大为上个国"


def tiny_vocab() -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += sorted(set(SPORT + MONEY + FILLER + "北京天安门我爱你好世界，。！？"))
    tokens += list("abcdefghijklmnopqrstuvwxyz0123456789") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return {t: i for i, t in enumerate(tokens)}


def make_tiny_model(directory: Path, max_position: int = 64, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a ~100-token Chinese vocab, saved in the HF layout."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(tiny_vocab())
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_position,
    )
    modelio.save_pretrained(BertForMaskedLM(config), tokenizer, directory)
    return directory


def synthetic_news(n: int, seed: int) -> list[tuple[str, str]]:
    """Two easily separable topics built from disjoint character pools."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, pool = ("sports", SPORT) if i % 2 == 0 else ("finance", MONEY)
        text = "".join(rng.choice(pool + FILLER) for _ in range(rng.randint(6, 20)))
        rows.append((label, text))
    return rows


def write_tsv(path: Path, rows, header=("label", "text")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def news_data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("news")
    return write_tsv(d / "train.tsv", synthetic_news(96, 1)), write_tsv(d / "dev.tsv", synthetic_news(32, 2))


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None, check: bool = False, timeout: int = 300):
    """Run the real `bertkit` entry point in a subprocess with 1 thread."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "bertkit.cli", *args], input=input, capture_output=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"bertkit {' '.join(args)} failed:\n{proc.stderr.decode(errors='replace')}")
    return proc


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


def cli(*args: str, input: bytes = b"", check: bool = False) -> Result:
    """Run ``bertkit ARGS`` in this process through the real entry point, stdin/stdout/stderr as bytes."""
    from bertkit.cli import main

    stdin = io.TextIOWrapper(io.BytesIO(input), encoding="utf-8")
    out, err = io.BytesIO(), io.BytesIO()
    stdout, stderr = (io.TextIOWrapper(b, encoding="utf-8", write_through=True) for b in (out, err))
    code = 0
    saved_argv = sys.argv
    sys.argv = ["bertkit", *args]
    torch.set_num_threads(1)  # as run_cli's OMP_NUM_THREADS=1, also for module-scoped fixtures
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), _stdin(stdin):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what a process would print before dying
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(1)  # --threads must not leak into the next test
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"bertkit {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}")
    return result


@contextlib.contextmanager
def _stdin(stream):
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
