"""The ``bertkit`` command line: a thin layer over the library.

One module per command group (:mod:`.pretrain`, :mod:`.train`, :mod:`.classify`, :mod:`.embed`,
:mod:`.correct`, :mod:`.distill`, :mod:`.contrast`, :mod:`.compress`, :mod:`.evaluate`), registered here on the one Typer app (:mod:`.app`); the options several
commands share are defined once (:mod:`.options`).  A command parses, calls a runner or a
training recipe, and prints.  Every command reads files or stdin (``-``), writes stdout or
``-o FILE``, and logs on stderr.  A :class:`~bertkit.core.errors.BertkitError` becomes one
``error: ...`` line and exit code 1.
"""

import os
import sys

import typer

from ..core.errors import BertkitError
from . import classify, compress, contrast, correct, distill, embed, evaluate, pretrain, train
from .app import app

# the commands, in the order --help lists them
app.command()(pretrain.pretrain)
app.command()(train.train)
app.command()(classify.predict)
app.command(name="eval")(evaluate.evaluate)
app.command()(embed.embed)
app.command()(correct.correct)
app.command()(distill.distill)
app.command()(contrast.contrast)
app.command()(compress.compress)

def main() -> None:
    """Console entry point: user errors as one line, never a traceback."""
    try:  # typer vendors click from 0.29 on
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as click_exc

    try:
        code = app(standalone_mode=False)
    except BertkitError as exc:  # a usage error exits 2, an interrupted training run 130
        exit_code = getattr(exc, "exit_code", 1)
        _fail(f"{exc} (see --help)" if exit_code == 2 else str(exc), exit_code)
    except click_exc.NoArgsIsHelpError:
        sys.exit(0)  # the help has been shown
    except click_exc.UsageError as exc:
        _fail(f"{exc.format_message()} (see --help)", 2)
    except click_exc.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader (e.g. `head`) went away: not an error for a pipeline.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:  # unreadable input, unwritable output, full disk
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", 1)
    if code == 130:  # typer turns Ctrl-C into a silent exit 130
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


