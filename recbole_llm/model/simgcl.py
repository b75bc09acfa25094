"""SimGCL: Yu et al., "Are Graph Augmentations Necessary? Simple Graph Contrastive Learning for
Recommendation" (SIGIR 2022); reference implementation Coder-Yu/SELFRec (model/graph/SimGCL.py).

RecBole 1.2.1 has no SimGCL. It is RecBole's LightGCN (its ID embeddings, normalised graph, BPR
loss and ego-embedding regulariser, unchanged) with two changes:

- the readout is the mean of layers 1..L, without the ego layer 0, as in the reference;
- a contrastive term: two views whose every layer gets uniform noise of norm ``eps`` pointing into
  the embedding's orthant (Eq. 7: e' = e + eps * sign(e) * normalize(U(0, 1))), and InfoNCE with
  temperature ``cl_tau`` between the views of the batch's distinct users, and of its distinct
  positive items, the other batch nodes being the negatives (Eq. 3); weighted by ``cl_weight``.

Scores use the noise-free propagation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.general_recommender.lightgcn import LightGCN

from recbole_llm.errors import UserError
from recbole_llm.model.layers import SymmetricGraph, info_nce
from recbole_llm.registry import register_model


@register_model
class SimGCL(LightGCN):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if int(self.n_layers) < 1:
            raise UserError(f"SimGCL n_layers={self.n_layers}: expected at least 1 (its readout leaves out layer 0)")
        self.eps = float(config["eps"])
        self.cl_weight = float(config["cl_weight"])
        self.cl_tau = float(config["cl_tau"])
        self.graph = SymmetricGraph(self.norm_adj_matrix)  # the same products, faster

    def forward(self, perturbed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.get_ego_embeddings()
        layers = []
        for _ in range(self.n_layers):
            embeddings = self.graph(embeddings)
            if perturbed:
                noise = F.normalize(torch.rand_like(embeddings), dim=-1)
                embeddings = embeddings + torch.sign(embeddings) * noise * self.eps
            layers.append(embeddings)
        out = torch.stack(layers, dim=1).mean(dim=1)
        return torch.split(out, [self.n_users, self.n_items])

    def contrastive_loss(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """InfoNCE between two noisy views over the batch's distinct users and distinct items."""
        users, items = torch.unique(users), torch.unique(items)
        user_1, item_1 = self.forward(perturbed=True)
        user_2, item_2 = self.forward(perturbed=True)
        return (info_nce(user_1[users], user_2[users], user_2[users], self.cl_tau)
                + info_nce(item_1[items], item_2[items], item_2[items], self.cl_tau))

    def calculate_loss(self, interaction):
        rec_loss = super().calculate_loss(interaction)  # LightGCN's BPR + regulariser on the clean view
        if not self.cl_weight:
            return rec_loss
        cl_loss = self.contrastive_loss(interaction[self.USER_ID], interaction[self.ITEM_ID])
        return rec_loss, self.cl_weight * cl_loss  # RecBole's trainer sums the parts and logs each
