"""The graph CF backbones as RLMRec's reference trained them (HKUDS/RLMRec,
encoder/models/general_cf/{lightgcn,sgl,simgcl}.py and encoder/models/{loss_utils,model_utils}.py),
written for RecBole. RLMRec's published gains are over these, not over RecBole's LightGCN/SGL or
SELFRec's SimGCL, which differ from them in readout, augmentation, negatives and regulariser:

- **readout**: the sum of layers 0..L (the ego layer included), not a mean;
- **BPR**: the batch mean of softplus(s_neg - s_pos); **regulariser**: ``reg_weight`` times the
  squared L2 norm of every parameter of the model (whole tables, not the batch's rows);
- **RLMRecLightGCN** trains on an edge-dropped graph: each step keeps each edge of the normalised
  adjacency with probability ``keep_rate`` (values not rescaled); scores use the full graph;
- **RLMRecSGL** (edge-drop SGL): BPR on the full graph; two views, each on its own edge-dropped
  graph; InfoNCE (``cl_tau``) of the batch's users against all users of the second view, and of its
  positive and negative items against all items, summed and weighted by ``cl_weight``;
- **RLMRecSimGCL**: BPR on the full, noise-free graph; two views whose every propagated layer
  gets e + eps * sign(e) * normalize(U(0, 1)) noise; InfoNCE of the batch's users against all
  users and of its positive items against all items of the second view.

They are RecBole's LightGCN (its ID embeddings, Xavier-uniform start, normalised graph
D^-1/2 A D^-1/2 and full-ranking scores) with these losses. Each keeps, during training, the
propagation its BPR loss scores (``main_view``), which RLMRec's alignment reuses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.general_recommender.lightgcn import LightGCN

from recbole_llm.errors import UserError
from recbole_llm.model.layers import SymmetricGraph, csr_product, info_nce_by_id
from recbole_llm.registry import register_model


def drop_edges(adjacency: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Each stored edge kept with probability ``keep_rate``, its value unchanged (the reference)."""
    if keep_rate >= 1.0:
        return adjacency
    keep = (torch.rand(adjacency._nnz(), device=adjacency.device) + keep_rate).floor() == 1  # the reference's rule
    return torch.sparse_coo_tensor(adjacency._indices()[:, keep], adjacency._values()[keep], adjacency.shape,
                                   check_invariants=False).coalesce()


class _RLMRecGraphCF(LightGCN):
    """RLMRec's LightGCN: sum readout, batch-mean BPR, L2 over all parameters."""

    sums_over_batch = False  # every loss a batch mean, as RLMRec's terms are

    @classmethod
    def run_label(cls, config: dict) -> str:
        return f"{cls.architecture}(RLMRec code)"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.keep_rate = float(config["keep_rate"] if config["keep_rate"] is not None else 1.0)
        if not 0 < self.keep_rate <= 1:
            raise UserError(f"keep_rate={self.keep_rate}: expected the fraction of edges kept, in (0, 1]")
        self.main_view: tuple[torch.Tensor, torch.Tensor] | None = None
        # The parameters the regulariser covers, held here because RLMRec-Gen swaps the embedding
        # modules for masked stand-ins during a step: the real tables stay regularised.
        self._regularised = list(self.parameters())
        self.graph = SymmetricGraph(self.norm_adj_matrix)  # the full graph (drop_edges reads the COO one)

    def forward(self, graph: torch.Tensor | None = None, perturbed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Users' and items' sum of layers 0..L over ``graph`` (default: the full graph)."""
        multiply = self.graph if graph is None else csr_product(graph)
        embeddings = self.get_ego_embeddings()
        total = embeddings
        for _ in range(self.n_layers):
            embeddings = multiply(embeddings)
            if perturbed:
                embeddings = self.perturb(embeddings)
            total = total + embeddings
        return torch.split(total, [self.n_users, self.n_items])

    def perturb(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def regulariser(self) -> torch.Tensor:
        return self.reg_weight * sum(w.pow(2).sum() for w in self._regularised)

    @staticmethod
    def bpr(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return F.softplus((users * negatives).sum(-1) - (users * positives).sum(-1)).mean()

    def _main(self, graph: torch.Tensor | None, interaction) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """BPR on the main view over ``graph``; returns it and the batch's ids."""
        if self.restore_user_e is not None or self.restore_item_e is not None:
            self.restore_user_e, self.restore_item_e = None, None  # scores cached for evaluation are stale
        user_all, item_all = self.forward(graph)
        self.main_view = (user_all, item_all)
        ids = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        return self.bpr(user_all[ids[0]], item_all[ids[1]], item_all[ids[2]]), ids


@register_model
class RLMRecLightGCN(_RLMRecGraphCF):
    """LightGCN as RLMRec trained it: BPR on an edge-dropped graph (keep 0.8), sum readout."""

    architecture = "LightGCN"

    def calculate_loss(self, interaction):
        bpr, _ = self._main(drop_edges(self.norm_adj_matrix, self.keep_rate), interaction)
        return bpr, self.regulariser()


@register_model
class RLMRecSGL(_RLMRecGraphCF):
    """SGL (edge drop) as RLMRec trained it: BPR on the full graph, InfoNCE against all nodes."""

    architecture = "SGL"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.cl_weight, self.cl_tau = float(config["cl_weight"]), float(config["cl_tau"])

    def calculate_loss(self, interaction):
        bpr, (users, pos, neg) = self._main(None, interaction)
        if not self.cl_weight:
            return bpr, self.regulariser()
        user_1, item_1 = self.forward(drop_edges(self.norm_adj_matrix, self.keep_rate))
        user_2, item_2 = self.forward(drop_edges(self.norm_adj_matrix, self.keep_rate))
        cl = (info_nce_by_id(user_1, user_2, users, self.cl_tau, user_2[1:])  # row 0: RecBole's padding
              + info_nce_by_id(item_1, item_2, pos, self.cl_tau, item_2[1:])
              + info_nce_by_id(item_1, item_2, neg, self.cl_tau, item_2[1:]))
        return bpr, self.regulariser(), self.cl_weight * cl


@register_model
class RLMRecSimGCL(_RLMRecGraphCF):
    """SimGCL as RLMRec trained it: noisy views of the full graph, sum readout, all-node negatives."""

    architecture = "SimGCL"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.eps, self.cl_weight, self.cl_tau = float(config["eps"]), float(config["cl_weight"]), float(config["cl_tau"])

    def perturb(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Eq. 7: uniform noise of norm eps, rotated into the embedding's orthant."""
        return embeddings + self.eps * torch.sign(embeddings) * F.normalize(torch.rand_like(embeddings), dim=-1)

    def calculate_loss(self, interaction):
        bpr, (users, pos, _) = self._main(None, interaction)
        if not self.cl_weight:
            return bpr, self.regulariser()
        user_1, item_1 = self.forward(perturbed=True)
        user_2, item_2 = self.forward(perturbed=True)
        cl = (info_nce_by_id(user_1, user_2, users, self.cl_tau, user_2[1:])  # row 0: RecBole's padding
              + info_nce_by_id(item_1, item_2, pos, self.cl_tau, item_2[1:]))
        return bpr, self.regulariser(), self.cl_weight * cl
