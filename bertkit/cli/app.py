"""The Typer application every command module registers on."""

import typer

app = typer.Typer(
    help="BERT techniques for Chinese text, usable from the shell. Models default to the shipped bertkit-zh-mini.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help, as shell tools print it: no <bool> after flags, no boxes
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """BERT techniques for Chinese text, usable from the shell."""
