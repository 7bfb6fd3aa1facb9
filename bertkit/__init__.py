"""bertkit: BERT techniques for Chinese text, usable from the shell and as a library.

The runners are the library's front door, each built from a model in memory or loaded from a
directory (``Runner.load(dir)``; no argument: the shipped model)::

    from bertkit import Corrector, Embedder, Classifier
    corrector = Corrector.load()
    for text, changes in corrector.correct(["我们今天去电恼城"]): ...

They are imported on first use, so ``import bertkit`` (and the CLI's startup) stays light.
"""

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Classifier": "bertkit.classify.runner",
    "Corrector": "bertkit.correct.runner",
    "Embedder": "bertkit.embed.runner",
    "MaskedLanguageModel": "bertkit.pretrain.runner",
    "PoolingSpec": "bertkit.embed.model",
    "BertkitError": "bertkit.core.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bertkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted(__all__)
