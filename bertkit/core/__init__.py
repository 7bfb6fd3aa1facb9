"""The core layer: what every technique shares and nothing technique-specific.

Text input and output (:mod:`.textio`), atomic writes (:mod:`.files`), model directories and
their manifest (:mod:`.modelio`), module weights as safetensors (:mod:`.weights`), texts to
model inputs (:mod:`.encoding`), vocabularies and tokenizers (:mod:`.vocab`), devices and
arithmetic (:mod:`.device`), metrics (:mod:`.metrics`), logs and progress (:mod:`.progress`), the
runner contract (:mod:`.runner`) and the one user-facing error type (:mod:`.errors`).  Nothing
here imports from ``bertkit.training``, a technique package or ``bertkit.cli``.
"""
