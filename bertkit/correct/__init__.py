"""Chinese spelling correction with Soft-Masked BERT (Zhang et al., ACL 2020; see :mod:`.model`):
model, confusion (confusion sets and synthetic errors), data, task (the training recipe) and
runner (:class:`.runner.Corrector`)."""
