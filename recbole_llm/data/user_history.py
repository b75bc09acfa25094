"""The ``user_history`` feature kind: an LLM vector per user, encoded from the text of the user's
*training* items under the sequential protocol (LLM-ESR's retrieval of similar users; Liu et al.,
NeurIPS 2024, reference Applied-Machine-Learning-Lab/LLM-ESR).

The reference writes one prompt per user from the titles of their training items and embeds it
with the LLM. Here a user's text lists the texts of their ``user_history_items`` most recent
training items, newest first (the dataset's ``item_text_template``), and is encoded with the run's
``llm_encoder``, so an encoder that truncates long inputs drops the oldest items, never the newest.

The training items come from RecBole's own sequential split of the run's config (chronological
leave-one-out: every user's last two interactions are validation and test), so no validation or
test interaction reaches a user's text. The vectors live in ``DATASET.user_history_<encoder>``
(``user_history_<encoder>_id:token  user_history_<encoder>_emb:float_seq``) with a ``.json`` of
metadata; ``run`` builds the file when it is missing or its inputs changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_llm.data.features import FeatureFile, ensure_text_features, feature_builder, read_feature_file
from recbole_llm.data.text import item_texts, template_for
from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")
HISTORY_PREFIX = "Items the user interacted with, most recent first: "


def training_sequences(train_dataset: Any) -> dict[int, list[int]]:
    """Internal user id -> internal item ids of the user's training interactions, oldest first,
    from RecBole's training split dataset.

    A sequential dataset holds augmented rows (a prefix ``item_id_list`` and its next item); they
    are in RecBole's (user, time) order, so a user's sequence is the item list of their first row
    followed by the target of every row. Other datasets: their interactions in (user, time) order.
    """
    inter = train_dataset.inter_feat
    uid_field, iid_field = train_dataset.uid_field, train_dataset.iid_field
    users = inter[uid_field].numpy()
    targets = inter[iid_field].numpy()
    list_field = getattr(train_dataset, "item_id_list_field", None)
    sequences: dict[int, list[int]] = {}
    if list_field is not None and list_field in inter.columns:
        lists = inter[list_field].numpy()
        lengths = inter[train_dataset.item_list_length_field].numpy()
        for row, user in enumerate(users.tolist()):
            if user not in sequences:
                sequences[user] = lists[row, :lengths[row]].tolist()
            sequences[user].append(int(targets[row]))
        return sequences
    time_field = train_dataset.time_field
    order = np.lexsort((inter[time_field].numpy(), users)) if time_field in inter.columns else np.argsort(users, kind="stable")
    for row in order.tolist():
        sequences.setdefault(int(users[row]), []).append(int(targets[row]))
    return sequences


def sequential_training_histories(dataset: str, config_dict: dict[str, Any]) -> dict[str, list[str]]:
    """User token -> item tokens of their training interactions (oldest first) under the
    sequential protocol of ``config_dict`` (a sequential run's config): RecBole's split itself."""
    from recbole.config import Config

    from recbole_llm.runner import load_split, recbole_argv

    settings = {k: v for k, v in config_dict.items() if k != "llm_feature_fields"}
    with recbole_argv():
        config = Config(model="SASRec", dataset=dataset, config_dict=settings)  # any sequential model: the split
    data, train, _, _ = load_split(config, check_topk=False)
    uid_field, iid_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    return {str(data.id2token(uid_field, user)): [str(t) for t in data.id2token(iid_field, items)]
            for user, items in training_sequences(train.dataset).items()}


def user_history_text(history: Sequence[str], texts: dict[str, str], limit: int) -> str:
    """The text of one user: their last ``limit`` items' texts, newest first (items without text
    are left out, as the reference leaves out items without a title)."""
    recent = [texts[item] for item in reversed(list(history)) if texts.get(item)][:limit]
    return HISTORY_PREFIX + "; ".join(recent)


def user_history_feature_file(folder: Path, dataset: str, encoder: str = "minilm") -> FeatureFile:
    from recbole_llm.llm.encoders import slug

    return FeatureFile(folder, dataset, "user_history", slug(encoder))


@feature_builder("user_history", "user")
def user_history_for_run(folder: Path, dataset: str, config_dict: dict[str, Any]) -> FeatureFile:
    """The user-history vectors of the run's ``llm_encoder``, built when missing or stale."""
    if config_dict.get("protocol") != "sequential":
        raise UserError("user_history vectors follow the sequential protocol's split; expected a sequential model")
    limit = int(config_dict.get("user_history_items") or 20)
    if limit < 1:
        raise UserError(f"user_history_items={limit}: expected a positive number of items")
    template = template_for(folder, dataset, config_dict)
    texts = item_texts(folder, dataset, template)
    histories = sequential_training_histories(dataset, config_dict)
    user_texts = {user: user_history_text(history, texts, limit) for user, history in histories.items()}
    digest = hashlib.sha256(json.dumps(sorted(histories.items())).encode()).hexdigest()[:16]
    encoder = config_dict.get("llm_encoder") or "minilm"
    ff = user_history_feature_file(folder, dataset, encoder)
    if ff.path.is_file() and ff.meta() is None:  # the user's own file: say precisely what is missing
        ids, _ = read_feature_file(ff)
        missing = sorted(set(user_texts) - set(ids))
        if missing:
            raise UserError(f"{ff.path} has no vector for {len(missing)} users with training data "
                            f"(e.g. {', '.join(missing[:3])}); expected one row per user, or no file "
                            "(then `recbole-llm run` encodes the histories itself)")
    wanted = {"template": template.describe(), "history_items": limit, "histories": digest,
              "split": "sequential leave-one-out (training part)"}
    return ensure_text_features(ff, user_texts, wanted, encoder, device=config_dict.get("llm_device"),
                                batch_size=int(config_dict.get("llm_batch_size") or 32))
