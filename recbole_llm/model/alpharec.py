"""AlphaRec: Sheng et al., "Language Representations Can be What Recommenders Need: Findings and
Potentials" (ICLR 2025); reference implementation LehengTHU/AlphaRec.

No ID embeddings at all. An item's input is the frozen LLM vector of its title, z_i (``item_text:
title``, the paper's input); a user's is the mean of z_i over the user's *training* items. One
shared projector (a 2-layer MLP with LeakyReLU whose hidden width follows the reference's rule, or a
bias-free linear map) maps both into a 64-d space, LightGCN propagation over the normalised
user-item graph refines them (mean over layers 0..L), and scores are cosine similarities trained
with InfoNCE (temperature tau) against ``num_negs`` uniformly sampled negatives per positive that
exclude the user's training items. As in the reference, training draws users uniformly and one of
their training items per step (``train_sampling: user``); ``interaction`` uses RecBole's batches.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_llm.data.features import preloaded_matrix
from recbole_llm.model.layers import (
    SampledInfoNCE,
    SymmetricGraph,
    build_projector,
    cosine,
    light_propagate,
    negative_groups,
    normalized_adjacency,
)
from recbole_llm.registry import register_model


def mean_of_items(interactions: sp.spmatrix, item_vectors: np.ndarray) -> np.ndarray:
    """Each user's mean item vector over their training interactions (zeros for users without)."""
    binary = sp.csr_matrix(interactions, dtype=np.float32)
    binary.data[:] = 1.0
    counts = np.asarray(binary.sum(axis=1)).ravel()
    sums = binary @ item_vectors
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def _join_vector_buffers(module: torch.nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Checkpoints written before the vectors shared one buffer hold ``user_llm`` and ``item_llm``:
    joined into ``llm_rows`` (the same values) so they load."""
    if prefix + "user_llm" in state_dict:
        state_dict[prefix + "llm_rows"] = torch.cat([state_dict.pop(prefix + "user_llm"),
                                                     state_dict.pop(prefix + "item_llm")])


@register_model
class AlphaRec(GeneralRecommender):
    input_type = InputType.POINTWISE  # negatives are sampled inside the model, not by RecBole
    type = ModelType.GENERAL
    llm_features = ("item",)
    # Without ID embeddings a model trained on one dataset scores another: only the projector is
    # carried over, with the settings that shape it (and the encoder that defines its input).
    zero_shot = True
    transfer_keys = ("llm_encoder", "item_text", "embedding_size", "n_layers", "projector",
                     "projector_hidden_multiplier")

    @classmethod
    def run_label(cls, config: dict) -> str:
        """Leaderboard name: the encoder, and every departure from the reference configuration
        (the linear projector, another hidden width, the whole item text instead of the title,
        weight decay), so
        that no variant is shown under the paper's name. Records from before ``item_text`` existed
        encoded the whole text."""
        encoder = Path(str(config.get("llm_encoder") or "minilm")).name  # a model folder: its name
        parts = ["linear"] if config.get("projector") == "linear" else []
        parts.append(encoder)
        multiplier = config.get("projector_hidden_multiplier")
        if config.get("projector") != "linear" and multiplier is not None:
            parts.append(f"hidden {float(multiplier):g}x")
        if (config.get("item_text") or "full") != "title":
            parts.append("full text")
        if config.get("weight_decay"):  # the reference trains without any (its --weight_decay is unused)
            parts.append(f"weight decay {float(config['weight_decay']):g}")
        return f"AlphaRec({', '.join(parts)})"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_layers = int(config["n_layers"])
        item_vectors = preloaded_matrix(dataset, config, "item")
        interactions = dataset.inter_matrix(form="csr").astype(np.float32)
        # Frozen inputs: a buffer, never parameters (no gradient reaches them). Users' rows, then
        # items', in one tensor, as the projector reads them on every step: concatenating the two
        # tables copied every row each step (0.6 % of a step on ml-100k; docs/speed.md).
        user_vectors = mean_of_items(interactions, item_vectors)
        self.register_buffer("llm_rows", torch.from_numpy(np.concatenate([user_vectors, item_vectors])))
        self.register_load_state_dict_pre_hook(_join_vector_buffers)
        multiplier = config["projector_hidden_multiplier"]
        self.projector = build_projector(config["projector"], item_vectors.shape[1], int(config["embedding_size"]),
                                         None if multiplier is None else float(multiplier))
        self.graph = SymmetricGraph(normalized_adjacency(interactions, self.n_users, self.n_items))
        self.objective = SampledInfoNCE(config, interactions, self.n_items, negative_groups(config, dataset))
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def user_llm(self) -> torch.Tensor:
        """Each user's LLM input vector (the mean of its training items'), [n_users, d]."""
        return self.llm_rows[: self.n_users]

    @property
    def item_llm(self) -> torch.Tensor:
        """Each item's LLM vector, [n_items, d]."""
        return self.llm_rows[self.n_users:]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = self.projector(self.llm_rows)
        out = light_propagate(self.graph, ego, self.n_layers)
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        self._cached = None
        user_all, item_all = self.forward()
        return self.objective.loss(user_all, item_all, interaction[self.USER_ID], interaction[self.ITEM_ID])

    def _embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is None or self.training:
            user_all, item_all = self.forward()
            self._cached = (cosine(user_all), cosine(item_all))
        return self._cached

    def predict(self, interaction):
        users, items = self._embeddings()
        return (users[interaction[self.USER_ID]] * items[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        users, items = self._embeddings()
        return (users[interaction[self.USER_ID]] @ items.T).view(-1)

    def intent_scores(self, users: torch.Tensor, intent_llm: torch.Tensor, alpha: float) -> torch.Tensor:
        """Scores of all items for users steered by an intention (the paper's intention-aware use):
        e~_u = (1 - alpha) e_u / |e_u| + alpha e_intent / |e_intent|, with e_intent the projected LLM
        vector of the text, then cosine with the items. Both sides are normalised first, as the
        model scores by cosine, so alpha weighs them alike for every user whatever its norm (the
        reference repository has no intention code)."""
        user_all, item_all = self.forward()
        intent = self.projector(intent_llm.view(1, -1).to(self.item_llm.dtype))
        blended = (1.0 - alpha) * cosine(user_all[users]) + alpha * cosine(intent)
        return cosine(blended) @ cosine(item_all).T

    def load_transferable_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the projector of a model trained on another dataset (its data buffers stay ours)."""
        from recbole_llm.errors import UserError

        projector = {k[len("projector."):]: v for k, v in state_dict.items() if k.startswith("projector.")}
        source_dim = next(v for k, v in projector.items() if k.endswith("weight")).shape[1]
        if source_dim != self.item_llm.shape[1]:
            raise UserError(
                f"the source model was trained on {source_dim}-d LLM vectors but this dataset's item "
                f"vectors are {self.item_llm.shape[1]}-d; expected features from the same encoder")
        self.projector.load_state_dict(projector)
        self._cached = None

    def train(self, mode: bool = True):
        self._cached = None  # parameters change between evaluations
        return super().train(mode)
