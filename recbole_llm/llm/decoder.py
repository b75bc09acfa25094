"""Slices of a Llama-style causal LM (SmolLM2 and the like): run some of its decoder layers over
vectors of our own choosing, with a mask of our own choosing.

Molar's user model runs the LM's top layers over item vectors; BAHE runs the lower layers once per
behaviour text (offline) and trains the upper ones over the pooled behaviour vectors. Both call the
layers one by one with eager attention and an additive mask, so any attention pattern can be given.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def decoder_of(lm: Any) -> Any:
    """The decoder stack (embeddings, layers, final norm, rotary embedding) of a causal LM."""
    return lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model


def check_split(split: int, total: int) -> None:
    """BAHE's split layer: at least one layer below it (the offline encoder) and one above (trained)."""
    from recbole_llm.errors import UserError

    if not 1 <= split < total:
        raise UserError(f"bahe_split_layer={split}: expected 1 to {total - 1} (of the LM's {total} layers; "
                        "at least one below the split encodes the behaviours, one above it trains)")


def copied_layers(lm: Any, start: int, stop: int) -> nn.ModuleList:
    """Copies of decoder layers ``start``..``stop - 1``, owned by the caller (training them leaves the
    LM as it is), set to eager attention: it takes an additive mask as given."""
    layers = nn.ModuleList(copy.deepcopy(layer) for layer in decoder_of(lm).layers[start:stop])
    for layer in layers:
        layer.self_attn.config = copy.copy(layer.self_attn.config)
        layer.self_attn.config._attn_implementation = "eager"
    return layers


def run_layers(layers: nn.ModuleList, rotary: Any, h: torch.Tensor, positions: torch.Tensor,
               allowed: torch.Tensor) -> torch.Tensor:
    """``h`` [B, L, d] through ``layers``; ``positions`` [B, L] rotary positions; ``allowed`` boolean
    [B or 1, L, L]: may query q attend to key k. Returns the residual stream after the last layer
    (no final norm)."""
    additive = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device)
    additive = additive.masked_fill(~allowed, torch.finfo(h.dtype).min)[:, None].expand(h.shape[0], 1, -1, -1)
    position_embeddings = rotary(h, positions)
    for layer in layers:
        out = layer(h, attention_mask=additive, position_ids=positions, position_embeddings=position_embeddings)
        h = out[0] if isinstance(out, tuple) else out
    return h


def causal_padded_mask(real: torch.Tensor) -> torch.Tensor:
    """[B, L, L] for right-padded rows (``real`` [B, L] boolean): causal, and no real key is hidden
    from any query; padding keys are hidden."""
    length = real.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    return causal[None] & real[:, None, :]
