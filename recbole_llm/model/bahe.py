"""BAHE (Geng et al., "Breaking the Length Barrier: LLM-Enhanced CTR Prediction in Long Textual User
Behaviors", SIGIR 2024, arXiv 2403.19347), a click-through-rate model. No official code exists;
this follows the paper's hierarchy (see docs/bahe.md for every choice the paper leaves open).

- **Atomic behaviours, offline:** each item's text (``item_text_template``) goes once through the
  lower ``bahe_split_layer`` decoder layers of the LM, frozen, and is pooled over its tokens
  (``bahe_pooling``: mean) into one vector: a table of one row per item, stored as a feature file
  RecBole loads (``item_lower_<lm>_k<split>_<pooling>``). A behaviour shared by many users is
  encoded once, which is the paper's saving.
- **Behaviour interaction, trained:** copies of the LM's upper layers (``bahe_split_layer`` to the
  top) and its final norm run over the user's history as a sequence of those vectors (causal, the
  history's last ``MAX_ITEM_LIST_LENGTH`` impressions), and the output at the last behaviour is the
  user representation Q_u. The candidate item's vector goes through the same upper layers alone,
  giving Q_i.
- **Prediction:** y = DNN(Q_u ⊕ Q_i) (``mlp_hidden_size``, ReLU, ``dropout_prob``), BCE on the click.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import MLPLayers
from recbole.utils import InputType
from torch import nn

from recbole_llm.data.features import preloaded_matrix
from recbole_llm.errors import UserError
from recbole_llm.llm.decoder import causal_padded_mask, check_split, copied_layers, decoder_of, run_layers_to_last
from recbole_llm.registry import register_model


class UpperLayers(nn.Module):
    """The LM's decoder layers from ``split`` to the top and its final norm, over behaviour vectors."""

    def __init__(self, lm: Any, split: int) -> None:
        super().__init__()
        decoder = decoder_of(lm)
        self.layers = copied_layers(lm, split, len(decoder.layers))
        self.norm = copy.deepcopy(decoder.norm)
        self.rotary = copy.deepcopy(decoder.rotary_emb)
        self.float()

    def forward(self, behaviours: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """[B, L, d] right-padded behaviour vectors, ``real`` [B, L] -> [B, d]: the output at each
        row's last real behaviour (rotary positions 0..L-1; a row without any reads position 0)."""
        positions = torch.arange(behaviours.shape[1], device=behaviours.device)[None].expand(len(behaviours), -1)
        last = (real.sum(1) - 1).clamp(min=0)
        return self.norm(run_layers_to_last(self.layers, self.rotary, behaviours, positions,
                                            causal_padded_mask(real), last))


@register_model
class BAHE(SequentialRecommender):
    input_type = InputType.POINTWISE
    protocol = "ctr"
    llm_features = ("item_lower",)

    @classmethod
    def run_label(cls, config: dict) -> str:
        """The paper's name for the defaults; the LM, split layer and pooling when they differ."""
        parts = []
        if config.get("llm_encoder") not in (None, "smollm2"):
            from recbole_llm.llm.encoders import slug

            parts.append(slug(str(config["llm_encoder"])))
        if int(config.get("bahe_split_layer") or 28) != 28:
            parts.append(f"split {config['bahe_split_layer']}")
        if (config.get("bahe_pooling") or "mean") != "mean":
            parts.append(f"{config['bahe_pooling']} pooling")
        return f"BAHE({', '.join(parts)})" if parts else "BAHE"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from recbole_llm.llm.encoders import causal_lm

        self.LABEL = config["LABEL_FIELD"]
        table = preloaded_matrix(dataset, config, "item_lower")
        self.register_buffer("behaviours", torch.from_numpy(table), persistent=False)
        _, lm = causal_lm(str(config["llm_encoder"]))
        width, total = int(lm.config.hidden_size), len(decoder_of(lm).layers)
        split = int(config["bahe_split_layer"])
        if table.shape[1] != width:
            raise UserError(f"the behaviour table is {table.shape[1]}-d but {config['llm_encoder']} is {width}-d; "
                            "expected a table written by the lower layers of the same LM (llm_encoder)")
        check_split(split, total)  # also where the table is the user's own file, built by no encoder here
        self.upper = UpperLayers(lm, split)
        self.head = nn.Sequential(
            MLPLayers([2 * width, *config["mlp_hidden_size"]], config["dropout_prob"], "relu"),
            nn.Linear(config["mlp_hidden_size"][-1], 1))
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, interaction) -> torch.Tensor:
        """The click logit of each row: DNN(Q_u ⊕ Q_i)."""
        seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.ITEM_ID]
        real = torch.arange(seq.shape[1], device=seq.device)[None] < lengths[:, None]
        user = self.upper(self.behaviours[seq], real)
        item = self.upper(self.behaviours[target][:, None], torch.ones_like(target, dtype=torch.bool)[:, None])
        return self.head(torch.cat([user, item], dim=-1)).squeeze(-1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.loss(self.forward(interaction), interaction[self.LABEL].float())

    def predict(self, interaction) -> torch.Tensor:
        return torch.sigmoid(self.forward(interaction))
