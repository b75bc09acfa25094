"""TIGER: Rajput et al., "Recommender Systems with Generative Retrieval" (NeurIPS 2023); references
EdoardoBotta/RQ-VAE-Recommender and MTandHJ/RecBoard (TIGER/).

Items are not ID embeddings but *semantic IDs*: tuples of codes from residual quantization of the
items' LLM vectors, plus a collision code (``recbole_llm.data.semantic_ids``). A small T5
encoder-decoder reads the user's history as semantic-ID tokens, preceded by the paper's hashed
user token, and generates the next item's tuple token by token:

- vocabulary: pad (0, also the decoder's start token), eos (1), then each level's codes with their
  own offset (code c of level l and code c of level l' are different tokens), then the user
  buckets (user id mod ``tiger_user_buckets``);
- training (``calculate_loss``): teacher-forced cross-entropy on the target item's tuple, over
  every (history -> next item) pair RecBole's sequential augmentation produces (full histories,
  truncated to ``MAX_ITEM_LIST_LENGTH`` items), with RecBole's own trainer loop;
- ranking (``full_sort_predict``): beam search constrained by a prefix trie of valid tuples, so
  every beam is a real item; beam rank r gets score ``beam_size - r`` and every other item -inf,
  so RecBole's full-ranking evaluator computes Recall/NDCG from the beams like for any model
  (items not returned rank after them).

Cold start: with ``tiger_cold_start: true`` the trie holds every item of the dataset, including
items without training interactions, which the model can then generate through the codes they
share with trained items; by default it holds the items seen in training. :class:`TIGERTrainer`
adds to each evaluation the decoding throughput, the invalid-beam rate (0 with the trie; measured
without it, ``tiger_constrained: false``) and how many targets were unseen in training and how
often they were hit.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType, ModelType

from recbole_llm.data.semantic_ids import describe, semantic_id_meta  # also registers the feature kind
from recbole_llm.errors import UserError
from recbole_llm.model.quantizers import collision_stats
from recbole_llm.registry import register_model

logger = logging.getLogger("recbole_llm")
PAD, EOS = 0, 1
FIRST_CODE_TOKEN = 2

# The paper's T5 (4+4 layers, d_model 128, 6 heads of 64, MLP 1024) is the default (TIGER.yaml).
# A size left at ``~`` is scaled to the catalogue instead (a variant, labelled "scaled T5"): small
# catalogues (ml-100k: 1,682 items, ~100k training pairs) get SASRec-sized layers (RecBole's
# SASRec: 64-d, 2 layers, FFN 256), which keeps a CPU epoch affordable.
SMALL_CATALOGUE = 10_000
T5_SMALL = {"t5_d_model": 64, "t5_d_ff": 256, "t5_d_kv": 16, "t5_num_heads": 4, "t5_num_layers": 2}
T5_PAPER = {"t5_d_model": 128, "t5_d_ff": 1024, "t5_d_kv": 64, "t5_num_heads": 6, "t5_num_layers": 4}


@functools.lru_cache(maxsize=None)
def _cache_argument() -> str:
    """transformers renamed T5's ``past_key_values`` argument to ``cache`` (5.x); use what is there."""
    import inspect

    from transformers import T5ForConditionalGeneration

    return "cache" if "cache" in inspect.signature(T5ForConditionalGeneration.forward).parameters else "past_key_values"


def t5_sizes(config: Any, n_items: int) -> dict[str, int]:
    """The T5 sizes of a run: the configured ones (TIGER.yaml: the paper's), sizes scaled to the
    catalogue for those left at ``~``."""
    defaults = T5_SMALL if n_items < SMALL_CATALOGUE else T5_PAPER
    sizes = {}
    for key, default in defaults.items():
        value = config[key] if key in config else None
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"{key}={value!r}: expected a positive integer (or ~ for the size scaled to the dataset)")
        sizes[key] = default if value is None else value
    decoder_layers = config["t5_num_decoder_layers"] if "t5_num_decoder_layers" in config else None
    sizes["t5_num_decoder_layers"] = sizes["t5_num_layers"] if decoder_layers is None else int(decoder_layers)
    return sizes


def build_trie(codes: np.ndarray, items: np.ndarray, sizes: list[int]) -> list[torch.Tensor]:
    """A prefix trie of the items' code tuples, one table per level.

    ``tables[l][node, c]`` is the node reached from prefix ``node`` (a node of level l, the root is
    node 0 of level 0) by code c, or -1 when no item continues that way; at the last level it is
    the item id. Dense tables turn "which codes may follow" into one gather for a whole beam batch.
    """
    node = np.zeros(len(items), dtype=np.int64)
    n_nodes = 1
    tables = []
    for level, size in enumerate(sizes):
        table = np.full((n_nodes, size), -1, dtype=np.int64)
        key = node * size + codes[:, level]
        if level == len(sizes) - 1:
            table[node, codes[:, level]] = items
        else:
            unique, child = np.unique(key, return_inverse=True)
            table[unique // size, unique % size] = np.arange(len(unique))
            node, n_nodes = child.reshape(-1), len(unique)
        tables.append(torch.from_numpy(table))
    return tables


def _schedule_name(value: Any) -> str:
    """A ``tiger_lr_schedule`` value, normalised (unset means RecBole's constant rate)."""
    return str(value or "constant").lower()


# What the paper trains with (section 4 and appendix): the T5 above, semantic IDs of an RQ-VAE with
# 3 levels of 256 codes, Adafactor (T5X's optimizer; the paper names the rate and the schedule) at
# 0.01 for the first 10k steps, then inverse square-root decay, 200k steps of batches of 256.
# ``run_label`` names every departure from it, so no variant shows under the paper's name.
REFERENCE = {"semantic_id_method": "rqvae", "semantic_id_codebook_size": 256, "learner": "adafactor",
             "learning_rate": 0.01, "tiger_lr_schedule": "inverse_sqrt", "tiger_warmup_steps": 10_000,
             "tiger_train_steps": 200_000, "train_batch_size": 256}


def variant_parts(config: dict) -> list[str]:
    """How ``config`` departs from :data:`REFERENCE` and the paper's T5, in short words (empty for
    the paper's configuration). Records from before these settings existed carry ``None`` for the
    sizes they scaled to the catalogue and no ``tiger_train_steps``."""
    parts = []
    method = str(config.get("semantic_id_method") or "rqkmeans")
    if method != "rqvae":
        parts.append(method)
    elif config.get("rqvae_optimizer") is None:
        parts.append("RQ-VAE v1 loss")  # before the loss terms were put on one scale
    elif (config.get("rqvae_epochs") or 20000) < 20000:
        parts.append(f"RQ-VAE {config['rqvae_epochs']} epochs")
    size = config.get("semantic_id_codebook_size")
    if size is None:
        parts.append("scaled codebooks")
    elif size != REFERENCE["semantic_id_codebook_size"]:
        parts.append(f"{'x'.join(map(str, size)) if isinstance(size, (list, tuple)) else size} codes")
    encoder = str(config.get("llm_encoder") or "minilm").rstrip("/").rsplit("/", 1)[-1]
    if encoder != "minilm":
        parts.append(encoder)
    sizes = {key: config.get(key) for key in T5_PAPER}
    decoder_layers = config.get("t5_num_decoder_layers")
    if any(value is None for value in sizes.values()):
        parts.append("scaled T5")
    elif sizes != T5_PAPER or decoder_layers not in (None, T5_PAPER["t5_num_layers"]):
        parts.append(f"T5 {sizes['t5_d_model']}-d {sizes['t5_num_layers']}+{decoder_layers or sizes['t5_num_layers']} "
                     f"layers {sizes['t5_num_heads']}x{sizes['t5_d_kv']} heads FF {sizes['t5_d_ff']}")
    learner, lr = str(config.get("learner") or "adam").lower(), config.get("learning_rate")
    schedule = _schedule_name(config.get("tiger_lr_schedule"))
    if (learner, lr) != (REFERENCE["learner"], REFERENCE["learning_rate"]) or schedule != "inverse_sqrt":
        parts.append(f"{learner} {lr:g} {schedule}" if isinstance(lr, (int, float)) else f"{learner} {schedule}")
    elif (config.get("tiger_warmup_steps") or 0) != REFERENCE["tiger_warmup_steps"]:
        parts.append(f"warm-up {config.get('tiger_warmup_steps') or '1 epoch'}")
    steps = config.get("tiger_train_steps")
    if steps is None:
        epochs = config.get("epochs")
        parts.append(f"max {epochs} epoch{'' if epochs == 1 else 's'}")
    elif steps != REFERENCE["tiger_train_steps"]:
        parts.append(f"{steps} steps max")
    batch = config.get("train_batch_size")
    if batch is not None and batch != REFERENCE["train_batch_size"]:
        parts.append(f"batch {batch}")
    return parts


class TIGERTrainer(Trainer):
    """RecBole's trainer, unchanged for training and full-ranking evaluation; each evaluation's
    result also carries TIGER's own numbers (kept out of RecBole's metric names):

    ``tiger_decode_users_per_s`` (users ranked per second of beam search), ``tiger_invalid_beam_rate``
    (returned beams that are no item), ``tiger_unseen_targets`` (evaluation targets without any
    training interaction) and ``tiger_unseen_recall@K`` (how often those were in the top K), plus
    the semantic IDs' collisions over the dataset's items (``tiger_colliding_items``,
    ``tiger_colliding_tuples``, ``tiger_max_items_per_tuple``: before the collision code).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self._unseen: dict | None = None  # counters while evaluate() runs (not for other callers)
        self.lr_schedule = _schedule_name(config["tiger_lr_schedule"])
        if self.lr_schedule not in ("constant", "inverse_sqrt"):
            raise UserError(f"tiger_lr_schedule={self.lr_schedule!r}: expected constant or inverse_sqrt")
        self.warmup_steps = config["tiger_warmup_steps"]
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 1):
            raise UserError(f"tiger_warmup_steps={self.warmup_steps!r}: expected a positive number of steps "
                            "(or ~ for one epoch)")
        self.lr_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._scheduler_state: dict | None = None  # from an interrupted run, applied when fit builds it

    def state_for_resume(self) -> dict:
        """What ``recbole_llm.resume_state`` saves beyond RecBole's trainer: the schedule's step."""
        return {"lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None}

    def restore_for_resume(self, state: dict) -> None:
        self._scheduler_state = state["lr_scheduler"]

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizers, plus ``learner: adafactor``: T5X's Adafactor (the paper trains T5
        with T5X), i.e. transformers' Adafactor with the given rate, updates scaled by each
        parameter's RMS, update clipping 1 and no momentum; ``weight_decay`` as given."""
        if str(kwargs.get("learner", self.learner)).lower() != "adafactor":
            return super()._build_optimizer(**kwargs)
        from transformers.optimization import Adafactor

        return Adafactor(kwargs.get("params", self.model.parameters()), lr=kwargs.get("learning_rate", self.learning_rate),
                         weight_decay=kwargs.get("weight_decay", self.weight_decay) or 0.0,
                         scale_parameter=True, relative_step=False, warmup_init=False)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        steps = self.config["tiger_train_steps"]
        if steps is not None:
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise UserError(f"tiger_train_steps={steps!r}: expected a positive number of optimizer steps "
                                "(or ~ to train for `epochs`)")
            # The paper's budget is counted in steps; RecBole counts epochs (early stopping still applies).
            self.epochs = -(-steps // max(len(train_data), 1))
            logger.info("TIGER: at most %d steps = %d epochs of %d batches", steps, self.epochs, len(train_data))
        if self.lr_schedule == "inverse_sqrt" and self.lr_scheduler is None:
            # The paper's schedule: the learning rate is constant for the first W steps (10k), then
            # lr * sqrt(W / step); ``tiger_warmup_steps: ~`` makes W one epoch. Stepped after every
            # optimizer step.
            warmup = self.warmup_steps or max(len(train_data), 1)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda step: 1.0 if step < warmup else (warmup / step) ** 0.5)
            self.optimizer.register_step_post_hook(lambda *_: self.lr_scheduler.step())
            if self._scheduler_state is not None:  # continuing an interrupted run: its step, its rate
                self.lr_scheduler.load_state_dict(self._scheduler_state)
                for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                    group["lr"] = lr
            logger.info("TIGER learning rate: %g for %d steps, then inverse square-root decay",
                        self.learning_rate, warmup)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        unseen = ~self.model.train_item_mask[positive_i]
        if unseen.any() and self._unseen is not None:
            top = scores[positive_u[unseen]].topk(max(self.config["topk"]), dim=1).indices
            targets = positive_i[unseen].view(-1, 1)
            self._unseen["targets"] += int(unseen.sum())
            for k in self.config["topk"]:
                self._unseen[k] += int((top[:, :k] == targets).any(1).sum())
        return interaction, scores, positive_u, positive_i

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self.model.reset_decode_stats()
        self._unseen = {"targets": 0, **{k: 0 for k in self.config["topk"]}}
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if result is None:
            return result
        stats = self.model.decode_stats
        result["tiger_decode_users_per_s"] = round(stats["users"] / max(stats["seconds"], 1e-9), 1)
        result["tiger_invalid_beam_rate"] = round(stats["invalid_beams"] / max(stats["beams"], 1), 4)
        result["tiger_unseen_targets"] = self._unseen["targets"]
        if self._unseen["targets"]:
            for k in self.config["topk"]:
                result[f"tiger_unseen_recall@{k}"] = round(self._unseen[k] / self._unseen["targets"], 4)
        self._unseen = None
        result.update(self.model.collisions)
        return result


@register_model
class TIGER(SequentialRecommender):
    input_type = InputType.POINTWISE  # one target per history, no sampled negatives
    type = ModelType.SEQUENTIAL
    llm_features = ("semantic_ids",)
    trainer_class = TIGERTrainer

    @classmethod
    def run_label(cls, config: dict) -> str:
        """Leaderboard name: ``TIGER`` for the paper's configuration, else ``TIGER(...)`` naming
        each departure (:func:`variant_parts`)."""
        parts = variant_parts(config)
        return f"TIGER({', '.join(parts)})" if parts else "TIGER"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from transformers import T5Config, T5ForConditionalGeneration

        raw = np.asarray(dataset.get_preload_weight(config["llm_feature_fields"]["semantic_ids"]), dtype=np.float64)
        if raw.ndim != 2 or (raw[1:] < 0).any() or not np.allclose(raw, np.rint(raw)):
            raise UserError("the semantic-ID feature does not hold non-negative integer codes (one row per item); "
                            "expected the file written by recbole-llm (is normalize_all/normalize_field set?)")
        codes = np.rint(raw).astype(np.int64)
        if len(np.unique(codes[1:], axis=0)) != self.n_items - 1:
            raise UserError("two items share one semantic ID; expected unique codes after the collision code")
        self.n_levels = codes.shape[1]                                # quantizer levels + collision code
        self.collisions = {f"tiger_{k}": v for k, v in collision_stats(codes[1:, :-1]).items()}
        self.level_sizes = [int(codes[1:, level].max()) + 1 for level in range(self.n_levels)]
        offsets = np.cumsum([FIRST_CODE_TOKEN] + self.level_sizes[:-1])
        self.level_offsets = [int(o) for o in offsets]
        self.user_buckets = int(config["tiger_user_buckets"] or 0)
        self.user_offset = FIRST_CODE_TOKEN + sum(self.level_sizes)
        self.beam_size = int(config["tiger_beam_size"])
        if self.beam_size < max(config["topk"]):
            raise UserError(f"tiger_beam_size={self.beam_size} is below the largest topk {max(config['topk'])}; "
                            "expected at least as many beams as ranked items")
        self.constrained = bool(config["tiger_constrained"])
        self.decode_batch_size = int(config["tiger_decode_batch_size"] or 256)

        tokens = torch.from_numpy(codes + offsets[None, :])
        tokens[0] = PAD                                                # RecBole's padding item
        self.register_buffer("item_tokens", tokens, persistent=False)

        # Items with training interactions (as a target or inside a training history).
        seen = torch.zeros(self.n_items, dtype=torch.bool)
        seen[dataset.inter_feat[self.ITEM_ID]] = True
        seen[dataset.inter_feat[self.ITEM_SEQ].reshape(-1)] = True
        seen[0] = False
        self.register_buffer("train_item_mask", seen, persistent=False)
        trie_items = np.arange(1, self.n_items) if config["tiger_cold_start"] else torch.nonzero(seen).view(-1).numpy()
        for level, table in enumerate(build_trie(codes[trie_items], trie_items, self.level_sizes)):
            self.register_buffer(f"trie_{level}", table, persistent=False)
        self.n_trie_items = len(trie_items)

        sizes = t5_sizes(config, self.n_items)
        self.t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=self.user_offset + self.user_buckets, d_model=sizes["t5_d_model"], d_ff=sizes["t5_d_ff"],
            d_kv=sizes["t5_d_kv"], num_heads=sizes["t5_num_heads"], num_layers=sizes["t5_num_layers"],
            num_decoder_layers=sizes["t5_num_decoder_layers"], dropout_rate=float(config["t5_dropout"]),
            feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
        ))
        self.reset_decode_stats()
        if str(config["device"]).startswith("cpu") and sizes == {**T5_PAPER, "t5_num_decoder_layers": T5_PAPER["t5_num_layers"]}:
            logger.warning("TIGER at the paper's size trains at about 25 s per step of 256 histories on one CPU thread "
                           "(ml-100k: hours per epoch); on a CPU the budget variant is --set t5_d_model=~ --set t5_d_ff=~ "
                           "--set t5_d_kv=~ --set t5_num_heads=~ --set t5_num_layers=~ --set learner=adamw "
                           "--set learning_rate=0.001 --set tiger_lr_schedule=constant (named in the run's label)")
        meta = semantic_id_meta(config)
        if meta is not None:
            logger.info("semantic IDs: %s", describe(meta))
        logger.info("TIGER: %d tokens per item (levels of %s codes), vocabulary %d, trie of %d items (%s), "
                    "T5 %s", self.n_levels, self.level_sizes, self.user_offset + self.user_buckets,
                    self.n_trie_items, "every item" if config["tiger_cold_start"] else "items seen in training",
                    ", ".join(f"{k[3:]} {v}" for k, v in sizes.items()))

    # -- inputs ---------------------------------------------------------------------------------

    def encoder_inputs(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """The history as tokens: [user bucket] + each item's codes in order; (ids, attention mask)."""
        item_seq = interaction[self.ITEM_SEQ]
        tokens = self.item_tokens[item_seq].flatten(1)                # RecBole pads at the end
        if self.user_buckets:
            users = interaction[self.USER_ID] % self.user_buckets + self.user_offset
            tokens = torch.cat([users.view(-1, 1), tokens], dim=1)
        mask = tokens != PAD
        width = max(int(mask.sum(1).max()), 1)                        # drop the all-padding tail
        return tokens[:, :width], mask[:, :width].long()

    def calculate_loss(self, interaction):
        input_ids, attention_mask = self.encoder_inputs(interaction)
        labels = self.item_tokens[interaction[self.POS_ITEM_ID]]
        return self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def predict(self, interaction):
        """Pointwise score: the log-likelihood of the candidate item's semantic ID given the history."""
        input_ids, attention_mask = self.encoder_inputs(interaction)
        labels = self.item_tokens[interaction[self.ITEM_ID]]
        logits = self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        return F.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)

    # -- generative retrieval -------------------------------------------------------------------

    def reset_decode_stats(self) -> None:
        self.decode_stats = {"users": 0, "seconds": 0.0, "beams": 0, "invalid_beams": 0}

    @torch.no_grad()
    def beam_search(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_size: int | None = None,
                    constrained: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``beam_size`` semantic IDs per history: (item ids [B, beam], log-probabilities [B, beam]).

        Beams are sorted best first. Item 0 marks an empty beam (fewer valid items than beams) or,
        without the trie, a generated tuple that is no item. Constrained, each step keeps only the
        codes that continue a valid prefix (scores of the rest are -inf before the top-k, as
        ``prefix_allowed_tokens_fn`` would do); unconstrained, every token of the vocabulary competes.
        """
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        beam_size = beam_size or self.beam_size
        constrained = self.constrained if constrained is None else constrained
        batch = input_ids.shape[0]
        device = input_ids.device
        encoded = self.t5.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Incremental decoding: the cache keeps each beam's decoder states, and the cross-attention
        # keys/values of each history computed once, at the first step. They are the same for all
        # beams of a user, so they are only re-laid out when the number of beams per user changes;
        # after the first step T5 reads only their shape from the encoder states it is given.
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        last = torch.full((batch, 1), PAD, dtype=torch.long, device=device)   # decoder start token
        node = torch.zeros(batch, 1, dtype=torch.long, device=device)
        score = torch.zeros(batch, 1, device=device)
        history, history_mask = encoded, attention_mask
        for level in range(self.n_levels):
            width = node.shape[1]
            out = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=history), attention_mask=history_mask,
                          decoder_input_ids=last, use_cache=True, **{_cache_argument(): cache})
            log_probs = F.log_softmax(out.logits[:, -1].float(), dim=-1).view(batch, width, -1)
            table, offset, size = getattr(self, f"trie_{level}"), self.level_offsets[level], self.level_sizes[level]
            if constrained:
                children = table[node.clamp_min(0)].masked_fill((node < 0).unsqueeze(-1), -1)   # [B, w, size]
                level_scores = log_probs[..., offset:offset + size].masked_fill(children < 0, float("-inf"))
                candidates = (score.unsqueeze(-1) + level_scores).view(batch, -1)
                score, index = candidates.topk(min(beam_size, candidates.shape[1]), dim=1)
                parent, token = index // size, index % size + offset
                node = children.view(batch, -1).gather(1, index)
            else:
                vocab = log_probs.shape[-1]
                candidates = (score.unsqueeze(-1) + log_probs).view(batch, -1)
                score, index = candidates.topk(min(beam_size, candidates.shape[1]), dim=1)
                parent, token = index // vocab, index % vocab
                code = token - offset
                parent_node = node.gather(1, parent)
                ok = (code >= 0) & (code < size) & (parent_node >= 0)
                node = torch.where(ok, table[parent_node.clamp_min(0), code.clamp(0, size - 1)], -1)
            node = node.masked_fill(torch.isinf(score), -1)
            if level < self.n_levels - 1:
                users = torch.arange(batch, device=device)
                cache.self_attention_cache.reorder_cache((users.unsqueeze(1) * width + parent).view(-1))
                new_width = node.shape[1]
                if new_width != width:                                # one cross-attention row set per beam
                    cache.cross_attention_cache.reorder_cache(users.repeat_interleave(new_width) * width)
                    history = encoded.new_zeros(()).expand(batch * new_width, *encoded.shape[1:])
                    history_mask = attention_mask.repeat_interleave(new_width, 0)
                last = token.view(-1, 1)
        items = node.clamp_min(0)
        if items.shape[1] < beam_size:                                # fewer candidates than beams
            pad = beam_size - items.shape[1]
            items = F.pad(items, (0, pad))
            score = F.pad(score, (0, pad), value=float("-inf"))
        self.decode_stats["beams"] += int(torch.isfinite(score).sum())
        self.decode_stats["invalid_beams"] += int((torch.isfinite(score) & (items == 0)).sum())
        return items, score

    @torch.no_grad()
    def recommend(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search for a batch of histories, in chunks of ``tiger_decode_batch_size`` users."""
        started = time.perf_counter()
        input_ids, attention_mask = self.encoder_inputs(interaction)
        items, scores = [], []
        for start in range(0, input_ids.shape[0], self.decode_batch_size):
            chunk = slice(start, start + self.decode_batch_size)
            mask = attention_mask[chunk]
            width = max(int(mask.sum(1).max()), 1)
            found, score = self.beam_search(input_ids[chunk, :width], mask[:, :width])
            items.append(found)
            scores.append(score)
        self.decode_stats["users"] += input_ids.shape[0]
        self.decode_stats["seconds"] += time.perf_counter() - started
        return torch.cat(items), torch.cat(scores)

    def full_sort_predict(self, interaction):
        """Scores for RecBole's full ranking: ``beam_size - r`` for the item of beam r, -inf for the rest."""
        items, beam_scores = self.recommend(interaction)
        rank_scores = torch.arange(self.beam_size, 0, -1, device=items.device, dtype=torch.float).expand_as(items)
        valid = (items > 0) & torch.isfinite(beam_scores)
        scores = torch.full((items.shape[0], self.n_items), float("-inf"), device=items.device)
        scores.scatter_(1, torch.where(valid, items, 0), torch.where(valid, rank_scores, float("-inf")))
        return scores
