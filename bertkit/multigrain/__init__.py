"""Multi-granularity input (characters plus lexicon words) for Lattice-BERT: see :mod:`.lattice`."""
