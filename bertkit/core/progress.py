"""Logs and progress on stderr, so stdout stays clean for pipelines."""

from __future__ import annotations

import contextlib
import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def log(message: str, rank: int | None = None) -> None:
    """Print on stderr, once: under torchrun only rank 0 speaks."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        console.print(message, markup=False, soft_wrap=True)  # one message, one line: never cut at 80 columns


class _Bar:
    """Training progress: a live rich bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.live = enabled and console.is_terminal
        self.last_print = 0.0
        self.start, self.start_step = time.time(), done
        self.loss = None
        if self.live:
            self.progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            )
            self.task = self.progress.add_task("train", total=total, completed=done, loss="-", lr="-")

    def advance(self, loss, lr: float) -> None:
        """One step done; ``loss`` may be a tensor on the GPU, read only when shown."""
        self.done += 1
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        if not self.enabled:
            return
        now = time.time()
        if self.live:
            fields = {}
            if now - self.last_print > 0.5 or self.done == self.total:
                self.last_print = now
                fields = {"loss": f"{float(self.loss):.4f}", "lr": f"{lr:.2e}"}
            self.progress.update(self.task, advance=1, **fields)
            return
        if now - self.last_print > 10 or self.done == self.total:
            self.last_print = now
            rate = (self.done - self.start_step) / max(1e-9, now - self.start)
            eta = (self.total - self.done) / max(rate, 1e-9)
            log(f"step {self.done}/{self.total} loss {float(self.loss):.4f} lr {lr:.2e} {rate:.2f} steps/s eta {eta / 60:.1f} min")

    def report(self, step: int, metrics: dict) -> None:
        if self.enabled and metrics:
            text = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            (self.progress.console if self.live else console).print(f"step {step}: {text}", markup=False, soft_wrap=True)


@contextlib.contextmanager
def training_progress(total: int, done: int, enabled: bool = True):
    bar = _Bar(total, done, enabled)
    if bar.live:
        with bar.progress:
            yield bar
    else:
        yield bar
