"""RecBole's own entry points after ``import recbole_llm``: the same stages as ``recbole-llm run``.

``run_recbole``, ``run_recboles``, ``objective_function`` and ``load_data_and_model`` each build a
RecBole ``Config`` and then split the data with ``data_preparation``. Four hooks make them reach
what ``recbole-llm run`` does, so a recbole-llm model gives the same numbers whichever door a user
takes:

1. ``Config``, for every registered (plugin) model: the toolkit's settings (properties/overall.yaml,
   the model's YAML, the dataset's YAML and protocol) become the defaults beneath the user's own
   config files, dicts and command line; the dataset is looked up in the toolkit's data root
   (ml-100k is copied there, so feature files never go into site-packages); the LLM feature files
   the model needs are built when missing or stale, and attached. Feature kinds that the user's
   config already names in ``llm_feature_fields`` are the user's own files, used as they are.
2. ``data_preparation``, for every config with a ``split_seed`` (recbole-llm's): the split is seeded
   by ``split_seed``, as in ``recbole-llm run``, so every seed of a model sees one split and LLM
   profiles built from its training part never see a validation or test interaction; and
   ``reproducibility`` (RecBole's switch, on by default) also selects torch's deterministic
   algorithms (see :func:`set_reproducibility`). RecBole's own
   models run through RecBole's own doors (no ``split_seed``) are left exactly as RecBole runs them.
   Under the ctr protocol, each user's first impression is dropped for non-sequential datasets, as
   RecBole's sequential dataset drops it (see ``drop_first_impressions``).
3. ``get_dataloader``, for a plugin model with ``train_dataloader(config)``: the training loader
   the model asks for (LLM-ESR's reference regime iterates one sequence per user).
4. ``create_samplers``, with ``eval_negatives: unseen``: sampled evaluation draws distinct items the
   user never interacted with, as LLM-ESR's reference does.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

_INSTALLED: list[str] = []


def recbole_llm_config(model_class: type, dataset: str, external: dict[str, Any], *,
                       data_path: str | os.PathLike | None = None, config_files: Iterable[str | os.PathLike] = (),
                       check: bool = False) -> dict[str, Any]:
    """The external config dict of a recbole-llm model: the toolkit's settings beneath ``external``
    (RecBole's merged config files, dict and command line, or `run`'s --set), with its LLM feature
    files attached. ``check``: refuse unknown or ill-typed keys, as `recbole-llm run` does."""
    from recbole_llm.config import build_config_dict
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.features import attach_llm_features

    folder = resolve_dataset(dataset, data_path if data_path is not None else external.get("data_path"))
    config_dict = build_config_dict(model_class, dataset, folder.parent, config_files, overrides=external, check=check)
    return attach_llm_features(model_class, folder, dataset, config_dict)


def _hook_config() -> None:
    from recbole.config import Config

    from recbole_llm.registry import plugin_entry

    original: Callable[..., Any] = Config._get_model_and_dataset

    def _get_model_and_dataset(self: Any, model: Any, dataset: Any) -> tuple[str, type, str]:
        name, model_class, dataset_name = original(self, model, dataset)
        if plugin_entry(name) is not None:
            self.external_config_dict = recbole_llm_config(model_class, dataset_name, self.external_config_dict)
        return name, model_class, dataset_name

    Config._get_model_and_dataset = _get_model_and_dataset


def _hook_data_preparation() -> None:
    import recbole.data as data_package
    import recbole.data.utils as data_utils
    import recbole.quick_start.quick_start as quick_start
    from recbole.utils import init_seed

    original: Callable[..., Any] = data_utils.data_preparation

    def data_preparation(config: Any, dataset: Any) -> Any:
        if config["split_seed"] is not None:  # a recbole-llm config: the split has its own seed
            set_reproducibility(config["reproducibility"])
            init_seed(config["split_seed"], config["reproducibility"])
        if "protocol" in config and config["protocol"] == "ctr":
            drop_first_impressions(dataset)
        loaders = original(config, dataset)
        if "eval_mask_history" in config and config["eval_mask_history"]:
            _mask_sequential_history(dataset, *loaders[1:])
        return loaders

    data_preparation.__doc__ = original.__doc__
    for module in (data_utils, data_package, quick_start):
        module.data_preparation = data_preparation


def set_reproducibility(on: bool) -> None:
    """RecBole's ``reproducibility`` only makes cuDNN deterministic. On a CPU with two or more
    threads the backward pass of advanced indexing (``table[ids]`` with repeated ids, in nearly every
    model's loss) accumulates in an order that depends on thread timing, so two runs with the same
    seed drifted apart after a few epochs. With ``on``, torch's deterministic algorithms are used
    (a sorted accumulation for that backward; ``benchmarks/determinism.py`` measures the cost);
    an operation with no deterministic version warns instead of failing."""
    import torch

    if on:
        # cuBLAS is deterministic only with a fixed workspace; read when its first handle is made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(on), warn_only=True)
    # Deterministic mode also fills every new tensor with NaN, a debugging aid for kernels that
    # read memory they never wrote (none here): 104 against 76 ms a LightGCNInfoNCE step, one profile.
    torch.utils.deterministic.fill_uninitialized_memory = False


def drop_first_impressions(dataset: Any) -> None:
    """The ctr protocol's rows are impressions with at least one earlier impression of the user:
    RecBole's sequential dataset (DIN, BAHE) has no row for a user's first one (nothing to read
    before it), so context-aware models (DeepFM) lose it too, and every model of the protocol is
    trained and tested on the same rows. The first is found as RecBole's augmentation finds it (a
    stable sort by time, then by user), so ties in time drop the same row; the rest keep their order."""
    import numpy as np
    from recbole.data.dataset import SequentialDataset

    if isinstance(dataset, SequentialDataset):
        return
    frame = dataset.inter_feat  # still a DataFrame here: RecBole builds its tensors in build()
    users = frame[dataset.uid_field].to_numpy()
    # Times as the float32 tensors RecBole's augmentation sorts (float64 could order float32 ties).
    order = np.argsort(frame[dataset.time_field].to_numpy(dtype=np.float32), kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    first = np.ones(len(order), dtype=bool)
    first[1:] = users[order][1:] != users[order][:-1]
    dataset.inter_feat = frame.drop(index=frame.index[order[first]]).reset_index(drop=True)


def _mask_sequential_history(dataset: Any, valid: Any, test: Any) -> None:
    """``eval_mask_history`` for sequential models (PAD's protocol): full ranking scores every item
    the user interacted with before the target -inf, as RecBole does for general models (RecBole
    masks nothing for sequential ones). Leave-one-out: validation masks the training items, test
    the training and validation items (the whole history, not only the model's input window)."""
    from recbole.data.dataloader import FullSortEvalDataLoader

    from recbole_llm.data.loaders import user_sequences
    from recbole_llm.errors import UserError

    if not hasattr(dataset, "item_list_length_field"):
        raise UserError("eval_mask_history is for sequential models: general models' full ranking already masks the "
                        "training items")
    sequences = user_sequences(dataset)
    for loader, drop in ((valid, 2), (test, 1)):
        if not isinstance(loader, FullSortEvalDataLoader):
            raise UserError("eval_mask_history needs full ranking (eval_args mode: full); sampled ranking draws its "
                            "candidates among items the user has not seen with eval_negatives: unseen")
        _mask_history(loader, {user: items[:-drop] for user, items in sequences.items()})


def _mask_history(loader: Any, history: dict[int, Any]) -> None:
    """Make ``loader`` return the index of each row's ``history`` items as RecBole's
    ``history_index``, which its trainer scores -inf. (torch's DataLoader took RecBole's bound
    ``collate_fn`` when it was built, so the loader's own attribute is wrapped.)"""
    import numpy as np
    import torch

    original = loader.collate_fn

    def collate_fn(index: Any) -> Any:
        interaction, _, positive_u, positive_i = original(index)
        users = interaction[loader.uid_field].numpy()
        items = [np.asarray(history.get(int(u), ()), dtype=np.int64) for u in users]
        rows = np.repeat(np.arange(len(users)), [len(i) for i in items])
        flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
        return interaction, (torch.from_numpy(rows), torch.from_numpy(flat)), positive_u, positive_i

    loader.collate_fn = collate_fn


def _hook_train_dataloader() -> None:
    """A plugin model whose class has ``train_dataloader(config)`` returning a loader class gets
    that class for its training split (e.g. LLM-ESR's one sequence per user); None keeps RecBole's."""
    import recbole.data.utils as data_utils

    from recbole_llm.registry import plugin_entry

    original: Callable[..., Any] = data_utils.get_dataloader

    def get_dataloader(config: Any, phase: str) -> Any:
        if phase == "train":
            entry = plugin_entry(config["model"])
            choose = getattr(entry.cls, "train_dataloader", None) if entry is not None else None
            loader = choose(config) if choose is not None else None
            if loader is not None:
                return loader
        return original(config, phase)

    get_dataloader.__doc__ = original.__doc__
    data_utils.get_dataloader = get_dataloader


def _hook_eval_negatives() -> None:
    """``eval_negatives: unseen`` (LLM-ESR's sampled evaluation): the validation and test samplers
    draw distinct items the user never interacted with (``recbole_llm.data.loaders``)."""
    import recbole.data.utils as data_utils

    original: Callable[..., Any] = data_utils.create_samplers

    def create_samplers(config: Any, dataset: Any, built_datasets: Any) -> Any:
        train, valid, test = original(config, dataset, built_datasets)
        choice = config["eval_negatives"] if "eval_negatives" in config else None
        if choice is None:
            return train, valid, test
        from recbole_llm.data.loaders import UnseenItemSampler, user_sequences
        from recbole_llm.errors import UserError

        if choice != "unseen" or not hasattr(dataset, "item_list_length_field"):
            raise UserError(f"eval_negatives={choice!r}: expected ~ (RecBole's draw) or unseen (sequential models)")
        sequences = user_sequences(dataset)
        return (train, UnseenItemSampler("valid", sequences, dataset.item_num) if valid is not None else None,
                UnseenItemSampler("test", sequences, dataset.item_num) if test is not None else None)

    create_samplers.__doc__ = original.__doc__
    data_utils.create_samplers = create_samplers


def install() -> None:
    """Install the hooks once (``import recbole_llm`` does)."""
    for hook in (_hook_config, _hook_data_preparation, _hook_train_dataloader, _hook_eval_negatives):
        if hook.__name__ not in _INSTALLED:
            hook()
            _INSTALLED.append(hook.__name__)
