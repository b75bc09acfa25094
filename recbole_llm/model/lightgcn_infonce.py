"""LightGCN + InfoNCE: the seed notes' middle baseline between LightGCN and AlphaRec.

RecBole's LightGCN (its ID embeddings, normalised graph and propagation; the products run on a
CSR copy of its graph, :class:`~recbole_llm.model.layers.SymmetricGraph`) trained with AlphaRec's
objective instead of BPR: cosine scores, InfoNCE with temperature ``tau`` over ``num_negs``
negatives excluding training items (:class:`~recbole_llm.model.layers.SampledInfoNCE`).
It isolates what the language representations add over the loss.
"""
from __future__ import annotations

import torch
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole.utils import InputType

from recbole_llm.model.layers import SampledInfoNCE, SymmetricGraph, cosine, light_propagate, negative_groups
from recbole_llm.registry import register_model


@register_model
class LightGCNInfoNCE(LightGCN):
    input_type = InputType.POINTWISE  # negatives are sampled inside the model

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.objective = SampledInfoNCE(config, self.interaction_matrix, self.n_items, negative_groups(config, dataset))
        self.graph = SymmetricGraph(self.norm_adj_matrix)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = light_propagate(self.graph, self.get_ego_embeddings(), self.n_layers)  # RecBole's readout
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        self.restore_user_e = self.restore_item_e = None
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        user_all, item_all = self.forward()
        loss = self.objective.loss(user_all, item_all, users, items)
        if self.reg_weight:
            # RecBole's LightGCN regularises the batch's ego embeddings; keep that option.
            loss = loss + self.reg_weight * self.reg_loss(
                self.user_embedding(users), self.item_embedding(items), require_pow=self.require_pow)
        return loss

    def _normalised(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.restore_user_e is None or self.restore_item_e is None:
            user_all, item_all = self.forward()
            self.restore_user_e, self.restore_item_e = cosine(user_all), cosine(item_all)
        return self.restore_user_e, self.restore_item_e

    def predict(self, interaction):
        users, items = self._normalised()
        return (users[interaction[self.USER_ID]] * items[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        users, items = self._normalised()
        return (users[interaction[self.USER_ID]] @ items.T).view(-1)
