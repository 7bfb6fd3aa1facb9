"""Multi-granularity input (characters plus lexicon words) for Lattice-BERT: lattices (:mod:`.lattice`),
the encoder and its pretraining (:mod:`.model`, :mod:`.task`), its directories (:mod:`.io`), and
classification / NER fine-tuning through the kit's own commands (:mod:`.heads`, :mod:`.encoding`)."""
