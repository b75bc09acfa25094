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
