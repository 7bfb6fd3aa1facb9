"""Options shared by several commands, each defined once, and the training options every training
command takes (``@training_command``)."""

import functools
import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

# ---------------------------------------------------------------- shared by several commands

Threads = Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's choice).")]
Compute = Annotated[str, typer.Option(help="Encoder arithmetic: float32, bfloat16 (autocast), or auto (bfloat16 where the hardware has native bf16 matmuls, e.g. AVX512-BF16/AMX CPUs: ~1.5x faster).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory (default: the shipped bertkit-zh-mini).")]
InputArg = Annotated[str, typer.Argument(metavar="INPUT", help="A .txt (one text a line), .tsv (header with text or text_a/text_b) or .jsonl file; '-' for stdin.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", metavar="FILE", help="Write FILE (atomically) instead of stdout; an existing FILE needs --overwrite.")]
OutputDir = Annotated[Optional[Path], typer.Option("--output-dir", "-o", metavar="DIR", help="The model directory to write; a non-empty one needs --overwrite or --resume.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o FILE or DIR.")]
Encoding = Annotated[Optional[str], typer.Option(help="Encoding of the input files (default: utf-8; gb18030 reads GBK).")]
SaveFp16 = Annotated[bool, typer.Option("--save-fp16", help="Store the final weights in float16 (half the size).")]


def set_threads(n: int | None) -> None:
    if n:
        import torch  # only now: input errors must not wait for torch to load

        torch.set_num_threads(n)


def check_inputs(*paths: str | None, encoding: str | None = None) -> None:
    """Apply --encoding and check every input file before anything slow (torch, a model) loads."""
    from ..core.textio import check_input, use_encoding

    use_encoding(encoding)
    for path in paths:
        check_input(path)


def deprecated(old: str, new: str) -> None:
    """An old spelling still works, and says once what replaced it."""
    from ..core.progress import log

    log(f"note: {old} is deprecated; use {new}")


def print_json(record: dict, digits: int | None = None) -> None:
    """One JSON line on stdout; floats rounded to ``digits`` when given."""
    if digits is not None:
        record = {k: round(v, digits) if isinstance(v, float) else v for k, v in record.items()}
    print(json.dumps(record, ensure_ascii=False))


# ---------------------------------------------------------------- the training options

# name -> (annotation, default); commands override defaults through @training_command(...)
TRAINING_OPTIONS = {
    "epochs": (Annotated[float, typer.Option(min=0.01, help="Passes over the training data.")], 3.0),
    "max_steps": (Annotated[Optional[int], typer.Option(min=1, help="Stop after this many optimizer steps (overrides --epochs).")], None),
    "max_minutes": (Annotated[Optional[float], typer.Option(min=0.01, help="Stop this run after N minutes of training, at a step boundary, evaluating and checkpointing there (--resume goes on).")], None),
    "batch_size": (Annotated[int, typer.Option(min=1, help="Examples per micro-batch and process.")], 32),
    "grad_accum": (Annotated[int, typer.Option(min=1, help="Micro-batches accumulated per optimizer step.")], 1),
    "lr": (Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warmup then linear decay). train: by default the rate the base model records for the task (bertkit.json), else 5e-5.")], 5e-5),
    "warmup": (Annotated[float, typer.Option(help="Fraction of the steps spent warming up the learning rate.")], 0.1),
    "weight_decay": (Annotated[float, typer.Option(help="AdamW weight decay (not applied to biases and LayerNorm).")], 0.01),
    "compute": (Annotated[str, typer.Option(help="Forward-pass arithmetic: float32, bfloat16 (autocast), or auto (bfloat16 where the hardware has native bf16 matmuls).")], "float32"),
    "bf16": (Annotated[bool, typer.Option("--bf16", hidden=True, help="Deprecated: --compute bfloat16.")], False),
    "eval_every": (Annotated[int, typer.Option(min=0, help="Evaluate every N steps (0: once per epoch).")], 0),
    "save_every": (Annotated[int, typer.Option(min=0, help="Write a resumable checkpoint every N steps (0: at each evaluation).")], 0),
    "seed": (Annotated[int, typer.Option(help="Random seed: same seed, same data and same result.")], 42),
    "resume": (Annotated[bool, typer.Option("--resume", help="Continue the run in -o DIR from its last checkpoint.")], False),
    "overwrite": (Annotated[bool, typer.Option("--overwrite", help="Start afresh in a non-empty -o DIR, replacing its model.")], False),
    "threads": (Threads, None),
    "recompute": (Annotated[str, typer.Option(help="Activation recomputation: none, full, ffn-keep, ffn2-keep, selective, every-k, or auto (profile each on one step, take the fastest that fits --max-memory).")], "none"),
    "every_k": (Annotated[Optional[int], typer.Option(help="Layers per segment for --recompute every-k (default: ceil(sqrt(layers))).")], None),
    "max_memory": (Annotated[Optional[str], typer.Option(help="Activation memory budget for --recompute auto and --find-batch-size, e.g. 900M or 8G.")], None),
    "find_batch_size": (Annotated[bool, typer.Option("--find-batch-size", help="Use the largest batch whose activations fit --max-memory (with the chosen policy).")], False),
    "per_sample_attention": (Annotated[Optional[bool], typer.Option("--per-sample-attention/--no-per-sample-attention", help="Checkpoint the attention core one sample at a time (default: on with any --recompute policy but none). Saves memory on CPU with attention dropout; nothing with GPU flash/memory-efficient attention.")], None),
}


def option_group(param: str, options: dict, defaults: dict | None = None, build=dict):
    """Put ``options`` (name -> (annotation, default)) into a command's signature in place of its
    parameter ``param``; the command receives their parsed values there, as ``build(values)``.

    Typer reads a command's options from its signature, so a group written once here appears,
    with one meaning, in every command that takes it (decorators stack).
    """
    defaults = defaults or {}
    unknown = set(defaults) - set(options)
    if unknown:
        raise TypeError(f"not options of this group: {sorted(unknown)}")

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        params = list(signature.parameters.values())
        at = [p.name for p in params].index(param)  # the options appear in --help where it stands
        added = [inspect.Parameter(name, params[at].kind, annotation=annotation, default=defaults.get(name, default))
                 for name, (annotation, default) in options.items()]

        @functools.wraps(fn)
        def command(**kwargs):
            values = {name: kwargs.pop(name) for name in options}
            return fn(**kwargs, **{param: build(values)})

        command.__signature__ = signature.replace(parameters=params[:at] + added + params[at + 1 :])
        return command

    return decorate


def training_command(**defaults):
    """The shared training options (with these defaults); the command receives ``training``, a
    function ``(output_dir, extra) -> TrainConfig``, and ``--threads`` is applied before it runs."""

    def build(values: dict):
        set_threads(values["threads"])
        return functools.partial(train_config, values)

    return option_group("training", TRAINING_OPTIONS, defaults, build)


def train_config(values: dict, output_dir: Path, extra: dict):
    """The loop's :class:`~bertkit.training.TrainConfig` from the parsed training options."""
    from ..core.device import use_bf16
    from ..core.files import check_output_dir
    from ..training import RecomputeOptions, TrainConfig

    if values["bf16"]:
        deprecated("--bf16", "--compute bfloat16")
    bf16 = values["bf16"] or use_bf16(values["compute"])
    check_output_dir(output_dir, values["overwrite"], resume=values["resume"])

    recompute = RecomputeOptions(policy=values["recompute"], every_k=values["every_k"],
                                 max_memory=values["max_memory"], find_batch_size=values["find_batch_size"],
                                 per_sample_attention=values["per_sample_attention"])
    return TrainConfig(
        output_dir=output_dir, epochs=values["epochs"], max_steps=values["max_steps"], max_minutes=values["max_minutes"],
        batch_size=values["batch_size"], grad_accum=values["grad_accum"], lr=values["lr"], warmup_ratio=values["warmup"],
        weight_decay=values["weight_decay"], bf16=bf16, eval_every=values["eval_every"],
        save_every=values["save_every"], seed=values["seed"], resume=values["resume"], overwrite=values["overwrite"], recompute=recompute, extra=extra,
    )
