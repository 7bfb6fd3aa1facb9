"""Counting FLOPs with ``torch.utils.flop_counter``, CPU attention included.

The counter has formulas for the GPU attention kernels but none for the CPU one
(``_scaled_dot_product_flash_attention_for_cpu``), so on these machines attention scores would
count as free; this adds the same formula the GPU kernels get.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # the counter passes shapes


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (quiet) that also counts CPU scaled-dot-product attention."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops})
