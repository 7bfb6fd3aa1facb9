"""bertkit: BERT techniques for Chinese text, usable from the shell and as a library."""

__version__ = "0.1.0"
