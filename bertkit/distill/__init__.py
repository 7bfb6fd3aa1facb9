"""Early exit by self-distillation (FastBERT, Liu et al. 2020; PABEE's patience rule beside it):
``model.py`` (students, exit rules, batched early exit), ``task.py`` (the two training stages),
``runner.py`` (prediction with exit layers, accuracy / FLOPs / wall-clock), ``curve.py``
(speed against accuracy, the speed an accuracy budget allows)."""
