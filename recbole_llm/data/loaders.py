"""Training loaders a model can ask for instead of RecBole's (``train_dataloader(config)``, see
``recbole_llm.hooks``)."""
from __future__ import annotations

from typing import Any

import numpy as np
from recbole.data.dataloader import TrainDataLoader
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader


def last_row_per_user(user_ids: np.ndarray) -> np.ndarray:
    """Index of each user's last row, for rows grouped by user in time order (RecBole's
    sequential training split: each user's augmented prefixes, the longest last)."""
    user_ids = np.asarray(user_ids)
    if len(user_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.r_[np.flatnonzero(user_ids[1:] != user_ids[:-1]), len(user_ids) - 1].astype(np.int64)


class UserSequenceTrainDataLoader(TrainDataLoader):
    """One training row per user and epoch: the user's whole training sequence (its longest
    prefix: every training item but the last as input, the last as target), as LLM-ESR's
    reference trains (``Seq2SeqDatasetAllUser``). The dataset itself keeps every prefix, so
    whatever reads ``train_data.dataset`` (training sequences, popularity, long-tail groups)
    sees all training interactions; only the iteration changes."""

    def __init__(self, config: Any, dataset: Any, sampler: Any, shuffle: bool = False) -> None:
        self._rows = last_row_per_user(dataset.inter_feat[dataset.uid_field].numpy())
        self._set_neg_sample_args(config, dataset, config["MODEL_INPUT_TYPE"], config["train_neg_sample_args"])
        self.sample_size = len(self._rows)
        AbstractDataLoader.__init__(self, config, dataset, sampler, shuffle=shuffle)

    def collate_fn(self, index: Any) -> Any:
        return super().collate_fn(self._rows[np.asarray(index, dtype=np.int64)])


class UnseenItemSampler:
    """Evaluation negatives as LLM-ESR's reference draws them (``eval_negatives: unseen``): for
    each evaluated row, ``num`` *distinct* items drawn uniformly among those the user has not
    interacted with up to and including the target (its ``random_neq`` with a growing exclusion
    list). RecBole's sampler for sequential models (``repeatable``) draws with replacement and
    excludes only the target, so history items come back as negatives.

    ``sequences`` maps each user id to their time-ordered items; under leave-one-out the
    validation target is the second last and the test target the last, so validation excludes
    every item but the last and test excludes them all."""

    def __init__(self, phase: str, sequences: dict[int, np.ndarray], item_num: int) -> None:
        self.phase = phase
        self.item_num = item_num
        self.items = np.arange(1, item_num)  # every real item (0 is RecBole's padding)
        seen = (lambda items: items[:-1]) if phase == "valid" else (lambda items: items)
        self.excluded = {user: np.unique(seen(items)) for user, items in sequences.items()}

    def sample_by_user_ids(self, user_ids: Any, item_ids: Any, num: int) -> Any:
        import torch

        out = np.empty((len(user_ids), num), dtype=np.int64)
        for row, (user, target) in enumerate(zip(np.asarray(user_ids), np.asarray(item_ids))):
            excluded = np.union1d(self.excluded.get(int(user), np.zeros(0, dtype=np.int64)), [target])
            pool = np.setdiff1d(self.items, excluded, assume_unique=True)
            if len(pool) < num:
                from recbole_llm.errors import UserError

                raise UserError(f"eval_negatives=unseen needs {num} items the user never interacted with; "
                                f"user {user} has only {len(pool)}")
            out[row] = np.random.choice(pool, num, replace=False)
        return torch.from_numpy(out.T.reshape(-1).copy())  # RecBole's order: negative k of every row, then k + 1


def user_sequences(dataset: Any) -> dict[int, np.ndarray]:
    """Every user's items in time order, from a sequential dataset's augmented rows (each row's
    target, after the first row's one-item history)."""
    feat = dataset.inter_feat
    users = feat[dataset.uid_field].numpy()
    order = np.lexsort((feat[dataset.time_field].numpy(), users))
    users, targets = users[order], feat[dataset.iid_field].numpy()[order]
    lengths = feat[dataset.item_list_length_field].numpy()[order]
    first = feat[getattr(dataset, f"{dataset.iid_field}_list_field")].numpy()[order][:, 0]
    out: dict[int, np.ndarray] = {}
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    for start, end in zip(starts, np.r_[starts[1:], len(users)]):
        head = [first[start]] if lengths[start] == 1 else []  # the user's first item opens no row of its own
        out[int(users[start])] = np.array(head + targets[start:end].tolist(), dtype=np.int64)
    return out
