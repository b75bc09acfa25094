"""Using a trained model: reload it from its checkpoint and recommend, optionally steered by a
free-text intention (AlphaRec's intention-aware recommendation)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from recbole_llm.errors import UserError
from recbole_llm.runner import load_checkpoint, load_split


@dataclass
class TrainedModel:
    config: Any
    dataset: Any  # the whole RecBole dataset (ids, tokens)
    train: Any    # the training split's dataset (history to exclude)
    model: torch.nn.Module
    checkpoint: str


def load_trained(checkpoint: str | os.PathLike) -> TrainedModel:
    """Rebuild the dataset split and the model of a run, with its trained weights, in eval mode."""
    from recbole.utils import get_model, init_seed

    state = load_checkpoint(checkpoint)
    config = state["config"]
    if str(config["device"]).startswith("cuda") and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    data, train, _, _ = load_split(config)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train._dataset).to(config["device"])
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    model.eval()
    return TrainedModel(config, data, train._dataset, model, state["path"])


def check_request(k: int, alpha: float) -> None:
    """A recommendation request's numbers, checked before anything is loaded."""
    if k < 1:
        raise UserError(f"-k {k}: expected a positive number of items")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha}: expected a weight between 0 and 1")


def recommend(
    trained: TrainedModel,
    user: str,
    k: int = 10,
    intent: str | None = None,
    alpha: float = 0.5,
) -> list[dict[str, Any]]:
    """Top-k items for ``user`` (a user token).

    General models score the user's learned representation and never return one of their training
    items. Sequential models (SASRec, LLM-ESR, TIGER) read the user's whole history in time order
    (its last ``MAX_ITEM_LIST_LENGTH`` items): they recommend what comes next, never an item already
    in that history. With ``intent`` (models with ``intent_scores``), the user's representation is
    blended with the projected LLM vector of the text: e~_u = (1 - alpha) e_u + alpha e_intent.
    """
    from recbole.data.interaction import Interaction
    from recbole.model.abstract_recommender import SequentialRecommender

    config, data, model = trained.config, trained.dataset, trained.model
    uid_field, iid_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    try:
        uid = int(data.token2id(uid_field, str(user)))
    except ValueError:
        raise UserError(f"user '{user}' is not in dataset '{config['dataset']}'; expected a {uid_field} "
                        "token of its .inter file") from None
    check_request(k, alpha)
    device = config["device"]
    sequential = isinstance(model, SequentialRecommender)
    # Never recommended again: a sequential model's whole history (also its input), else the training items.
    seen = _items_of(data.inter_feat if sequential else trained.train.inter_feat, config, uid)
    with torch.no_grad():
        if intent:
            if not hasattr(model, "intent_scores"):
                raise UserError(f"model {config['model']} cannot take an intention; expected AlphaRec")
            from recbole_llm.llm.encoders import load_encoder

            vector = load_encoder(config["llm_encoder"], device=str(device)).encode([intent], progress=False)
            scores = model.intent_scores(torch.tensor([uid], device=device), torch.as_tensor(vector, device=device), alpha)
        elif sequential:
            history = seen[-model.max_seq_length:]
            item_seq = torch.zeros(1, model.max_seq_length, dtype=torch.long)  # RecBole pads at the end
            item_seq[0, :len(history)] = history
            scores = model.full_sort_predict(Interaction({
                uid_field: torch.tensor([uid]), model.ITEM_SEQ: item_seq,
                model.ITEM_SEQ_LEN: torch.tensor([len(history)])}).to(device))
        else:
            scores = model.full_sort_predict(Interaction({uid_field: torch.tensor([uid])}).to(device))
    scores = scores.view(-1).float().cpu().clone()
    scores[seen] = -float("inf")
    scores[0] = -float("inf")  # padding
    top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices.tolist()
    texts = _item_texts(config)
    return [{"item": str(data.id2token(iid_field, i)), "text": texts.get(str(data.id2token(iid_field, i)), ""),
             "score": float(scores[i])} for i in top]


def _items_of(inter: Any, config: Any, uid: int) -> torch.Tensor:
    """The items of ``uid``'s interactions in ``inter`` (internal ids), oldest first."""
    rows = inter[config["USER_ID_FIELD"]] == uid
    items = inter[config["ITEM_ID_FIELD"]][rows]
    time_field = config["TIME_FIELD"]
    if time_field in inter.columns:
        items = items[torch.argsort(inter[time_field][rows], stable=True)]
    return items.cpu()


def _item_texts(config: Any) -> dict[str, str]:
    from pathlib import Path

    from recbole_llm.data.text import item_texts, template_for

    folder = Path(config["data_path"])
    try:
        return item_texts(folder, config["dataset"], template_for(folder, config["dataset"], config.final_config_dict))
    except UserError:  # no .item file or no text column: items are shown by id only
        return {}
