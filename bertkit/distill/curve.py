"""Speed against accuracy: the early-exit curve over a range of speeds, the speed a user's
accuracy budget allows (``--target-loss``), and the curve as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..classify.data import Example
from ..core.errors import BertkitError
from ..core.files import atomic_file
from .model import ExitRule
from .runner import EarlyExitRunner

DEFAULT_SPEEDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def exit_curve(runner: EarlyExitRunner, examples: Sequence[Example], speeds: Sequence[float] = DEFAULT_SPEEDS,
               batch_size: int | None = None, rounds: int = 1, source: str = "the data") -> list[dict]:
    """:meth:`EarlyExitRunner.evaluate` at each speed, with accuracy in points."""
    rows = []
    for speed in speeds:
        row = runner.evaluate(examples, ExitRule(speed=speed), batch_size=batch_size, rounds=rounds, source=source)
        rows.append({"speed": speed, "accuracy": round(100 * row["accuracy"], 2),
                     "accuracy_full": round(100 * row["accuracy_full"], 2),
                     "mean_exit_layer": round(row["mean_exit_layer"], 3), "flops_ratio": round(row["flops_ratio"], 3),
                     "speedup": round(row["speedup"], 3) if row["speedup"] else None, "n": row["n"]})
    return rows


def choose_speed(rows: Sequence[dict], target_loss: float) -> float:
    """The largest speed whose accuracy stays within ``target_loss`` points of the full model's."""
    if target_loss < 0:
        raise BertkitError(f"--target-loss must be at least 0 points, not {target_loss}")
    fine = [r["speed"] for r in rows if r["accuracy_full"] - r["accuracy"] <= target_loss + 1e-9]
    return max(fine, default=0.0)


def plot_curve(rows: Sequence[dict], path: Path, title: str) -> None:
    """Accuracy against FLOPs ratio and wall-clock speedup, one point per speed, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on these machines
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, marker in (("flops_ratio", "FLOPs ratio", "o"), ("speedup", "wall-clock speedup", "s")):
        if any(r[key] is None for r in rows):
            continue  # not timed
        ax.plot([r[key] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=label)
    for r in rows:
        ax.annotate(f"{r['speed']:g}", (r["flops_ratio"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(rows[0]["accuracy_full"], color="grey", linestyle=":", label="full model")
    ax.set_xlabel("times faster than the full model")
    ax.set_ylabel("accuracy (points)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, binary=True) as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
