"""RLMRec: Ren et al., "Representation Learning with Large Language Models for Recommendation"
(WWW 2024); reference implementation HKUDS/RLMRec (encoder/models/general_cf/*_plus.py for
RLMRec-Con, *_gene.py for RLMRec-Gen, encoder/config/modelconf/*.yml for their settings).

Model-agnostic: a graph CF backbone keeps its own loss and gains an alignment term with frozen
vectors s of LLM-written user and item profiles (``recbole-llm profile``):

    L = L_backbone + lambda * L_align

- **RLMRec-Con** (contrastive alignment, f(s, e) = exp(cos(sigma_down(s), e) / tau)): an MLP
  sigma_down maps each profile vector into the CF space; InfoNCE pulls the backbone's propagated
  embedding e of every batch user, positive item and negative item towards its own mapped profile.
  Negatives as in the reference: all users' mapped profiles for a user, the batch's mapped
  positives (negatives) for a positive (negative) item. lambda = ``align_weight``, tau = ``align_tau``.
- **RLMRec-Gen** (generative alignment, f(s, e) = exp(cos(s, sigma_up(e_hat)) / tau)): a fraction
  ``mask_ratio`` of all user and item nodes get a learnable mask token as their ego embedding (for
  the backbone's whole loss, as in the reference); from the propagated embeddings e_hat of the
  masked nodes an MLP sigma_up reconstructs their profile vectors, scored by InfoNCE among the
  masked nodes. lambda = ``recon_weight``, tau = ``recon_tau``.

Backbones (``backbone``: LightGCN | SGL | SimGCL; ``backbone_code``): by default RLMRec's own
implementations (``RLMRec``: recbole_llm/model/rlmrec_backbones.py, the backbones its published
gains are over), with the reference's per-backbone settings; ``backbone_code: RecBole`` takes
RecBole's LightGCN or SGL, ``SELFRec`` this package's port of SELFRec's SimGCL (variants, labelled
so). Each backbone keeps its noise-free propagation of the training step (the "main view", which
its BPR loss uses), so the alignment reuses it instead of propagating again. With lambda = 0 a
model is exactly its backbone: nothing extra is computed or drawn at random.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole.model.general_recommender.sgl import SGL
from recbole.utils import InputType
from torch import nn

import recbole_llm.llm.profiles  # noqa: F401  (registers the user_profile / item_profile feature builders)
from recbole_llm.errors import UserError
from recbole_llm.model.layers import MLPProjector, info_nce, info_nce_by_id
from recbole_llm.model.rlmrec_backbones import RLMRecLightGCN, RLMRecSGL, RLMRecSimGCL
from recbole_llm.model.simgcl import SimGCL
from recbole_llm.registry import register_model

SHUFFLE_SEED = 0  # shuffle_profiles: one fixed permutation, the same for every run and seed


class _KeepsMainView:
    """Mixin for a backbone: keeps the output of its noise-free propagation during training."""

    main_view: tuple[torch.Tensor, torch.Tensor] | None = None
    # RLMRec's terms are batch means, as every loss of the reference is. A backbone whose loss
    # sums over the batch instead (RecBole's SGL) gets them summed too, so lambda keeps the
    # reference's ratio to the backbone's loss rather than shrinking by the batch size.
    sums_over_batch = False

    def _is_main_view(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def forward(self, *args: Any, **kwargs: Any):
        out = super().forward(*args, **kwargs)
        if self.training and self._is_main_view(*args, **kwargs):
            self.main_view = out
        return out


class _LightGCNBackbone(_KeepsMainView, LightGCN):
    pass


class _SGLBackbone(_KeepsMainView, SGL):
    sums_over_batch = True  # RecBole's SGL: torch.sum over the batch for BPR and SSL

    def _is_main_view(self, graph: Any) -> bool:
        return graph is self.train_graph  # not one of the two edge-dropped views


class _SimGCLBackbone(_KeepsMainView, SimGCL):
    def _is_main_view(self, perturbed: bool = False) -> bool:
        return not perturbed


# (backbone, code) -> its class; it reads its settings (defaults: its own YAML) and must expose
# user_embedding / item_embedding (ego embeddings), users-then-items propagation and, after
# calculate_loss in training, ``main_view``. Adding one: such a class and a line here.
BACKBONES: dict[tuple[str, str], type] = {
    ("LightGCN", "RLMRec"): RLMRecLightGCN, ("SGL", "RLMRec"): RLMRecSGL, ("SimGCL", "RLMRec"): RLMRecSimGCL,
    ("LightGCN", "RecBole"): _LightGCNBackbone, ("SGL", "RecBole"): _SGLBackbone, ("SimGCL", "SELFRec"): _SimGCLBackbone,
}
REFERENCE_CODE = "RLMRec"
# What ran before ``backbone_code`` existed: records without it used these.
LEGACY_CODE = {"LightGCN": "RecBole", "SGL": "RecBole", "SimGCL": "SELFRec"}


def backbone_model_name(cls: type) -> str:
    """The registered model whose YAML holds a backbone class's defaults."""
    return next(base.__name__ for base in cls.__mro__ if base.__module__.startswith(("recbole.", "recbole_llm."))
                and not base.__name__.startswith("_"))


def backbone_defaults(name: str) -> dict[str, Any]:
    """The backbone's default settings: its YAML (RecBole's properties/model, or this package's)."""
    from recbole_llm.config import load_yaml, model_yaml

    path = model_yaml(name)
    return load_yaml(path) if path is not None else {}


def _backbone_key(config: Any) -> tuple[str, str]:
    name, code = str(config["backbone"] or "LightGCN"), str(config["backbone_code"] or REFERENCE_CODE)
    if (name, code) not in BACKBONES:
        known = ", ".join(f"{n} ({c} code)" for n, c in BACKBONES)
        raise UserError(f"backbone '{name}' with backbone_code '{code}' is not supported; expected one of {known}")
    return name, code


def _per_backbone(config: Any, key: str, backbone: str) -> float:
    """A setting given as one number, or as a mapping backbone -> number (the reference's settings)."""
    value = config[key]
    if isinstance(value, dict):
        if backbone not in value:
            raise UserError(f"{key} {value} has no value for backbone {backbone}; expected a number "
                            f"or a mapping with an entry for {backbone}")
        value = value[backbone]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r}: expected a number") from None


class _MaskedEgo(nn.Module):
    """Stands in for a backbone's nn.Embedding, serving a given (masked) weight matrix."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class _RLMRec(GeneralRecommender):
    """What both RLMRec variants share: the backbone, the profile vectors, prediction."""

    input_type = InputType.PAIRWISE  # BPR triples, as every backbone here is trained
    llm_features = ("user_profile", "item_profile")
    variant = ""

    @classmethod
    def run_label(cls, config: dict) -> str:
        """Leaderboard name, e.g. ``RLMRec-Con(SGL)``; other profiles or a shuffled control say so."""
        backbone = str(config.get("backbone") or "LightGCN")
        parts = [backbone]
        code = config.get("backbone_code") or LEGACY_CODE.get(backbone, REFERENCE_CODE)
        if code != REFERENCE_CODE:
            parts.append(f"{code} code")
        generator, encoder = config.get("profile_generator") or "smollm2", config.get("llm_encoder") or "minilm"
        if (generator, encoder) != ("smollm2", "minilm"):
            parts.append(f"{Path(str(generator)).name}+{Path(str(encoder)).name}")  # model folders: their names
        if not config.get("profile_checks"):  # records from before the key ran on unchecked profiles
            parts.append("unchecked profiles")
        if config.get("shuffle_profiles"):
            parts.append("shuffled profiles")
        return f"RLMRec-{cls.variant}({', '.join(parts)})"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.backbone_name, self.backbone_code = _backbone_key(config)
        backbone_cls = BACKBONES[(self.backbone_name, self.backbone_code)]
        # The backbone's settings: a mapping backbone -> value is the reference's per-backbone
        # setting (RLMRec's code only); unset (~) takes the backbone's own default, so a variant
        # RLMRec(X) starts from exactly the configuration X is run with. The record shows the values used.
        for key, default in backbone_defaults(backbone_model_name(backbone_cls)).items():
            value = config[key]
            if isinstance(value, dict):
                value = value.get(self.backbone_name) if self.backbone_code == REFERENCE_CODE else None
            config[key] = default if value is None else value
        user_profiles, item_profiles = self._profile_vectors(config, dataset)
        # Frozen inputs: buffers, never parameters; rebuilt from the feature files, not checkpointed.
        self.register_buffer("user_profiles", torch.from_numpy(user_profiles), persistent=False)
        self.register_buffer("item_profiles", torch.from_numpy(item_profiles), persistent=False)
        self.backbone = backbone_cls(config, dataset)
        if self.backbone.input_type != self.input_type:
            raise UserError(f"backbone {self.backbone_name} is trained {self.backbone.input_type.name}; "
                            f"expected a pairwise (BPR) backbone")

    def _profile_vectors(self, config: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        """Profile matrices aligned to RecBole's user and item ids (row 0: padding), checked
        complete for every id RecBole kept, and permuted across ids if ``shuffle_profiles``."""
        from recbole_llm.data.features import preloaded_matrix
        from recbole_llm.llm.profiles import profile_command

        generator, encoder = config["profile_generator"] or "smollm2", config["llm_encoder"] or "minilm"
        command = profile_command(Path(config["data_path"]), config["dataset"], generator, encoder, bool(config["profile_checks"]))
        fix = f"re-create it with `{command}`"
        users, items = (preloaded_matrix(dataset, config, kind, fix) for kind in ("user_profile", "item_profile"))
        if users.shape[1] != items.shape[1]:
            raise UserError(f"user profiles are {users.shape[1]}-d but item profiles {items.shape[1]}-d; "
                            "expected both encoded by the same llm_encoder")
        if config["shuffle_profiles"]:
            # The paper's control: every id gets another id's profile, so any gain left is not
            # from the profiles' content. Padding row 0 stays in place.
            rng = np.random.default_rng(SHUFFLE_SEED)  # private: the run's random streams are untouched
            users = np.concatenate([users[:1], users[1:][rng.permutation(len(users) - 1)]])
            items = np.concatenate([items[:1], items[1:][rng.permutation(len(items) - 1)]])
        return users, items

    @staticmethod
    def _build_extra(make: Any, seed: int) -> nn.Module:
        """Build one of RLMRec's own modules (seeded) without drawing from the global random
        streams, so the backbone's initialisation, sampling and noise stay the backbone's alone."""
        with torch.random.fork_rng(devices=[]):  # modules are built on the CPU; its stream is restored
            torch.default_generator.manual_seed(seed)  # the CPU stream only (torch.manual_seed seeds CUDA too)
            module = make()
            # The reference's initialisation (``_init_weight`` of its *_plus / *_gene models):
            # xavier-uniform weights, biases left at torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            # Not RecBole's zero biases: with 32-d CF inputs of norm ~0.1 the decoder's first bias
            # dominates its input, which keeps the reconstruction term near chance as in the reference.
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
        return module

    def _backbone_loss(self, interaction) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
        """The backbone's loss (a tensor or a tuple of parts) and its main view of this step."""
        self.backbone.main_view = None
        loss = self.backbone.calculate_loss(interaction)
        main_view, self.backbone.main_view = self.backbone.main_view, None  # no graph kept past the step
        if main_view is None:
            raise RuntimeError(f"backbone {self.backbone_name} computed no main view in calculate_loss")
        return loss, main_view

    def _backbone_scale(self, term: torch.Tensor, interaction) -> torch.Tensor:
        """A batch-mean term on the backbone's scale: summed over the batch if its loss is."""
        return term * len(interaction) if self.backbone.sums_over_batch else term

    @staticmethod
    def _plus(loss: Any, extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The backbone's loss parts and one more; RecBole's trainer sums them and logs each."""
        return (*(loss if isinstance(loss, tuple) else (loss,)), extra)

    def predict(self, interaction):
        return self.backbone.predict(interaction)

    def full_sort_predict(self, interaction):
        return self.backbone.full_sort_predict(interaction)

    # The backbone caches its scoring embeddings (restore_user_e ...): checkpoints carry its cache
    # so reloading the best epoch gives exactly the backbone's own evaluation.
    def other_parameter(self):
        return self.backbone.other_parameter()

    def load_other_parameter(self, para):
        self.backbone.load_other_parameter(para)


@register_model
class RLMRecCon(_RLMRec):
    """RLMRec-Con: contrastive alignment of CF embeddings with MLP-mapped profile vectors."""

    variant = "Con"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.align_weight = _per_backbone(config, "align_weight", self.backbone_name)
        self.align_tau = _per_backbone(config, "align_tau", self.backbone_name)
        config["align_weight"], config["align_tau"] = self.align_weight, self.align_tau
        d_profile, d_cf = self.user_profiles.shape[1], int(config["embedding_size"])
        # sigma_down: profile space -> CF space, hidden width halfway (the reference's MLP)
        self.mapper = self._build_extra(lambda: MLPProjector(d_profile, (d_profile + d_cf) // 2, d_cf), config["seed"])

    def alignment_loss(self, user_all: torch.Tensor, item_all: torch.Tensor, users: torch.Tensor,
                       pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """Sum of the three InfoNCE terms (batch users, positive items, negative items)."""
        user_prf = self.mapper(self.user_profiles[1:])  # all real users: the users' negatives
        # Each distinct batch item is mapped once (a batch repeats popular items many times), into a
        # table of the batch's items that ``local`` indexes; the terms are computed per distinct id.
        items, local = torch.unique(torch.cat([pos_items, neg_items]), return_inverse=True)
        item_prf, item_cf = self.mapper(self.item_profiles[items]), item_all[items]
        local_pos, local_neg = local.split([len(pos_items), len(neg_items)])
        return (info_nce_by_id(user_all[1:], user_prf, users - 1, self.align_tau, user_prf)
                + info_nce_by_id(item_cf, item_prf, local_pos, self.align_tau)
                + info_nce_by_id(item_cf, item_prf, local_neg, self.align_tau))

    def calculate_loss(self, interaction):
        loss, (user_all, item_all) = self._backbone_loss(interaction)
        if not self.align_weight:
            return loss  # exactly the backbone
        align = self.alignment_loss(user_all, item_all, interaction[self.USER_ID], interaction[self.ITEM_ID],
                                    interaction[self.NEG_ITEM_ID])
        return self._plus(loss, self.align_weight * self._backbone_scale(align, interaction))


@register_model
class RLMRecGen(_RLMRec):
    """RLMRec-Gen: masked nodes' profile vectors reconstructed from their propagated embeddings."""

    variant = "Gen"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.recon_weight = _per_backbone(config, "recon_weight", self.backbone_name)
        self.recon_tau = _per_backbone(config, "recon_tau", self.backbone_name)
        self.mask_ratio = _per_backbone(config, "mask_ratio", self.backbone_name)
        config["recon_weight"], config["recon_tau"], config["mask_ratio"] = (
            self.recon_weight, self.recon_tau, self.mask_ratio)
        if not 0 < self.mask_ratio < 1:
            raise UserError(f"mask_ratio={self.mask_ratio}: expected a fraction of nodes between 0 and 1")
        d_profile, d_cf = self.user_profiles.shape[1], int(config["embedding_size"])
        # Node order of the backbones' propagation: users, then items.
        self.register_buffer("node_profiles", torch.cat([self.user_profiles, self.item_profiles]), persistent=False)
        real = torch.ones(self.n_users + self.n_items, dtype=torch.bool)
        real[[0, self.n_users]] = False  # RecBole's padding user and item are never masked
        self.register_buffer("maskable", torch.nonzero(real).view(-1), persistent=False)
        self.n_masked = max(int(len(self.maskable) * self.mask_ratio), 1)
        self.mask_token = nn.Parameter(torch.zeros(1, d_cf))  # learnable, zeros at first (reference)
        # sigma_up: CF space -> profile space
        self.decoder = self._build_extra(lambda: MLPProjector(d_cf, (d_profile + d_cf) // 2, d_profile), config["seed"])
        # Its own random stream, so masking leaves the backbone's sampling and noise unchanged.
        self.mask_generator = torch.Generator().manual_seed(int(config["seed"]))

    def sample_masked_nodes(self) -> torch.Tensor:
        """``mask_ratio`` of the real user and item nodes, drawn without replacement."""
        pick = torch.randperm(len(self.maskable), generator=self.mask_generator)[: self.n_masked]
        return self.maskable[pick.to(self.maskable.device)]

    def _masked_ego(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.backbone.user_embedding.weight, self.backbone.item_embedding.weight])
        keep = torch.ones(len(ego), 1, device=ego.device, dtype=ego.dtype)
        keep[nodes] = 0.0
        masked = ego * keep + self.mask_token * (1.0 - keep)
        return torch.split(masked, [self.n_users, self.n_items])

    @contextlib.contextmanager
    def _backbone_sees(self, users: torch.Tensor, items: torch.Tensor) -> Iterator[None]:
        """Within the block the backbone reads these ego embeddings: RecBole's graph models take
        theirs from ``user_embedding`` / ``item_embedding``, so the masked ones stand in there."""
        real = self.backbone.user_embedding, self.backbone.item_embedding
        self.backbone.user_embedding, self.backbone.item_embedding = _MaskedEgo(users), _MaskedEgo(items)
        try:
            yield
        finally:
            self.backbone.user_embedding, self.backbone.item_embedding = real

    def reconstruction_loss(self, propagated: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the decoded embeddings of the masked nodes and their profile vectors."""
        decoded = self.decoder(propagated[nodes])
        return info_nce(decoded, self.node_profiles[nodes], self.node_profiles[nodes], self.recon_tau)

    def calculate_loss(self, interaction):
        if not self.recon_weight:
            return self._backbone_loss(interaction)[0]  # exactly the backbone: no masking
        nodes = self.sample_masked_nodes()
        with self._backbone_sees(*self._masked_ego(nodes)):
            loss, (user_all, item_all) = self._backbone_loss(interaction)
        recon = self.reconstruction_loss(torch.cat([user_all, item_all]), nodes)
        return self._plus(loss, self.recon_weight * self._backbone_scale(recon, interaction))
