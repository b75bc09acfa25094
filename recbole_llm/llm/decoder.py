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
    return lm.get_decoder()


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
    for layer in layers:  # each deep copy holds its own copy of the config
        layer.self_attn.config._attn_implementation = "eager"
    return layers


def run_layers(layers: nn.ModuleList, rotary: Any, h: torch.Tensor, positions: torch.Tensor,
               allowed: torch.Tensor) -> torch.Tensor:
    """``h`` [B, L, d] through ``layers``; ``positions`` [B, L] rotary positions; ``allowed`` boolean
    [B or 1, L, L]: may query q attend to key k. Returns the residual stream after the last layer
    (no final norm)."""
    additive = _additive(allowed, h.dtype)[:, None].expand(h.shape[0], 1, -1, -1)
    position_embeddings = rotary(h, positions)
    for layer in layers:
        out = layer(h, attention_mask=additive, position_embeddings=position_embeddings)
        h = out[0] if isinstance(out, tuple) else out  # transformers < 4.54 returns (hidden states, ...)
    return h


def run_layers_to_last(layers: nn.ModuleList, rotary: Any, h: torch.Tensor, positions: torch.Tensor,
                       allowed: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """:func:`run_layers` read at one position per row (``last`` [B]): the residual stream [B, d]
    there after the last layer. Equal to ``run_layers(...)[rows, last]``, but the last layer computes
    only what that position needs: keys and values over the sequence, the query, attention output,
    MLP and residual at ``last`` alone (BAHE reads one position of its history: for SmolLM2's upper
    layers this skips most of the top layer's work)."""
    import sys

    rows = torch.arange(len(h), device=h.device)
    layer = layers[-1]
    attn = layer.self_attn
    if not _plain_llama_layer(layer):  # extra norms (Qwen3's q/k norms, Gemma's): the whole stack
        return run_layers(layers, rotary, h, positions, allowed)[rows, last]
    if len(layers) > 1:
        h = run_layers(layers[:-1], rotary, h, positions, allowed)
    hf = sys.modules[type(attn).__module__]  # the architecture's own rotary and eager-attention code
    b, length, _ = h.shape
    normed = layer.input_layernorm(h)
    query = attn.q_proj(normed[rows, last]).view(b, 1, -1, attn.head_dim).transpose(1, 2)
    key = attn.k_proj(normed).view(b, length, -1, attn.head_dim).transpose(1, 2)
    value = attn.v_proj(normed).view(b, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(h, positions)
    query, _ = hf.apply_rotary_pos_emb(query, query, cos[rows, last][:, None], sin[rows, last][:, None])
    _, key = hf.apply_rotary_pos_emb(key, key, cos, sin)
    allowed_last = allowed.expand(b, -1, -1)[rows, last][:, None, None]   # [B, 1, 1, L]
    additive = _additive(allowed_last, h.dtype)
    out, _ = hf.eager_attention_forward(attn, query, key, value, additive, scaling=attn.scaling,
                                        dropout=attn.attention_dropout if attn.training else 0.0)
    x = h[rows, last] + attn.o_proj(out.reshape(b, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention pattern as HF's eager attention takes it: 0 where allowed, the dtype's
    lowest value elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _plain_llama_layer(layer: nn.Module) -> bool:
    """A Llama-style decoder layer (Llama, SmolLM2, Mistral, Qwen2): exactly the parts
    :func:`run_layers_to_last` computes by hand, nothing more."""
    parts = {name for name, _ in layer.named_children()}
    attention = {name for name, _ in layer.self_attn.named_children()}
    return parts == {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"} and \
        attention == {"q_proj", "k_proj", "v_proj", "o_proj"}


def causal_padded_mask(real: torch.Tensor) -> torch.Tensor:
    """[B, L, L] for right-padded rows (``real`` [B, L] boolean): causal, and no real key is hidden
    from any query; padding keys are hidden."""
    length = real.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    return causal[None] & real[:, None, :]
