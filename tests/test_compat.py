"""Each RecBole repair: the unrepaired code fails on today's stack, the repaired code works."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import recbole_llm  # noqa: F401  (applies the repairs)
from recbole_llm import compat


def test_numpy_aliases_repair() -> None:
    original = compat.ORIGINALS["Config.compatibility_settings"]
    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(AttributeError):
            original(None)  # RecBole's own version reads the removed np.float_
    from recbole.config import Config

    Config.compatibility_settings(None)
    assert np.float is np.float64 and np.int is np.int_ and np.bool is np.bool_


def _lightgcn_like(n_users: int, n_items: int, pairs: list[tuple[int, int]]) -> object:
    """The minimum of a LightGCN instance that get_norm_adj_mat reads."""
    from recbole.model.general_recommender.lightgcn import LightGCN

    rows, cols = zip(*pairs)
    fake = LightGCN.__new__(LightGCN)
    fake.n_users, fake.n_items = n_users, n_items
    fake.interaction_matrix = sp.coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n_users, n_items))
    return fake


def test_scipy_dok_update_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole.model.general_recommender.lightgcn import LightGCN

    pairs = [(0, 0), (0, 2), (1, 1), (2, 2), (2, 0)]
    fake = _lightgcn_like(3, 3, pairs)
    adj = LightGCN.get_norm_adj_mat(fake).to_dense().numpy()

    # Reference: D^-1/2 A D^-1/2 of the bipartite graph, built with COO.
    n = 6
    rows = [u for u, i in pairs] + [3 + i for u, i in pairs]
    cols = [3 + i for u, i in pairs] + [u for u, i in pairs]
    a = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).toarray()
    d = np.power(a.sum(1) + 1e-7, -0.5)
    np.testing.assert_allclose(adj, d[:, None] * a * d[None, :], rtol=1e-5)

    monkeypatch.delattr(sp.dok_matrix, "_update")
    with pytest.raises(AttributeError):
        LightGCN.get_norm_adj_mat(fake)


@pytest.fixture(scope="module")
def recbole_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint written by RecBole's trainer after one epoch of BPR on ml-100k."""
    from recbole_llm.runner import run

    out = tmp_path_factory.mktemp("ckpt")
    record = run("BPR", "ml-100k", epochs=1, output=None, run_dir=out / "run", verbose=False)
    return Path(record["checkpoint"])


# The unrepaired checkpoint below is saved with pickle protocol 4 on purpose; torch warns about that.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_torch_weights_only_repair(recbole_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(recbole_checkpoint)  # torch's default: weights_only=True
    assert state["config"]["model"] == "BPR" and "state_dict" in state

    # The allow-list is exact: a checkpoint with any other pickled global is still refused.
    class NotAllowed:
        pass

    evil = tmp_path / "evil.pth"
    torch.save({"config": state["config"], "payload": pickle.loads(pickle.dumps(np.random.RandomState(0)))}, evil)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil)

    # Without the repair, RecBole's own save (protocol 4, NumPy score) cannot be loaded weights-only.
    unrepaired = tmp_path / "unrepaired.pth"
    torch.save({**state, "best_valid_score": np.float64(0.1)}, unrepaired, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(unrepaired)


def _write_item_file(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.inter").write_text(
        "user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u in range(1, 4) for i in range(1, 4))
    )
    # item 2 has an empty token_seq cell and an empty float cell
    (folder / "tiny.item").write_text("item_id:token\ttags:token_seq\tprice:float\n1\ta b\t1.5\n2\t\t\n3\tc\t2.5\n")


def _load_tiny(root: Path) -> object:
    from recbole.config import Config
    from recbole.data import create_dataset

    config = Config(model="Pop", dataset="tiny", config_dict={
        "data_path": str(root), "load_col": None, "normalize_all": False,
        "user_inter_num_interval": None, "item_inter_num_interval": None,
    })
    return create_dataset(config)


def test_pandas_pin_keeps_recbole_loader_correct(tmp_path: Path) -> None:
    """Under pandas 3 this fails: empty token_seq cells stay NaN and token_seq remapping breaks."""
    import pandas as pd

    assert int(pd.__version__.split(".")[0]) < 3
    _write_item_file(tmp_path / "tiny")
    dataset = _load_tiny(tmp_path)
    tags = dataset.item_feat["tags"]
    tokens = dataset.field2id_token["tags"]
    rows = {dataset.id2token("item_id", i): [str(tokens[t]) for t in list(tags[i]) if t] for i in range(1, 4)}
    assert rows == {"1": ["a", "b"], "2": [], "3": ["c"]}
    assert not dataset.item_feat["price"].isna().any()  # NaN filled with the column mean


def test_atomic_files_read_without_quoting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that begins with a double quote is kept as written (Book-Crossing has ISBNs like
    '"0210000010'); RecBole's csv quoting made it swallow the rows after it."""
    import recbole.data.dataset.dataset as dataset_module

    from recbole_llm import compat

    folder = tmp_path / "tiny"
    folder.mkdir()
    rows = [("1", '"0210000010'), ("1", "b"), ("2", '"x"'), ("2", "b"), ("3", "c"), ("3", "b")]
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in rows))
    dataset = _load_tiny(tmp_path)
    assert dataset.inter_num == 6
    assert {str(t) for t in dataset.field2id_token["item_id"][1:]} == {'"0210000010', "b", '"x"', "c"}

    monkeypatch.setattr(dataset_module, "pd", compat.ORIGINALS["dataset.pd"])
    with pytest.raises(Exception):  # unrepaired: the quote runs over the rows after it
        assert _load_tiny(tmp_path).inter_num == 6


def test_pop_counts_interactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """MostPop must count every interaction, also when an item repeats inside one batch."""
    from recbole.data.interaction import Interaction
    from recbole.model.general_recommender.pop import Pop

    fake = Pop.__new__(Pop)
    torch.nn.Module.__init__(fake)
    fake.ITEM_ID, fake.device = "item_id", torch.device("cpu")
    fake.item_cnt = torch.zeros(5, 1, dtype=torch.long)
    batch = Interaction({"item_id": torch.tensor([1, 1, 1, 2, 4, 4])})
    Pop.calculate_loss(fake, batch)
    assert fake.item_cnt.view(-1).tolist() == [0, 3, 1, 0, 2]
    fake.item_cnt.zero_()
    Pop.calculate_loss(fake, Interaction({"item_id": torch.tensor([1, 3, 1, 2]), "label": torch.tensor([1.0, 0.0, 1.0, 0.0])}))
    assert fake.item_cnt.view(-1).tolist() == [0, 2, 0, 0, 0]  # sampled negatives are not popularity
    fake.item_cnt.zero_()
    compat.ORIGINALS["Pop.calculate_loss"](fake, batch)
    assert fake.item_cnt.view(-1).tolist() == [0, 1, 1, 0, 1]  # RecBole's own: once per batch


def test_tune_report_repair() -> None:
    """objective_function's ``tune.report(**metrics)`` reaches today's Ray as one dict (the real Ray
    Tune trial is in tests/test_recbole_doors.py)."""
    import inspect

    import recbole.quick_start.quick_start as quick_start

    original = compat.ORIGINALS["quick_start.tune"]
    assert list(inspect.signature(original.report).parameters)[0] == "metrics"  # one dict, no **kwargs

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def report(self, metrics: dict, *, checkpoint: object = None) -> None:
            self.calls.append((metrics, checkpoint))

    recorder = Recorder()
    shim = compat._TuneReportingDicts(recorder)
    with pytest.raises(TypeError):
        recorder.report(**{"recall@10": 0.5})  # what RecBole's call does to today's signature
    shim.report(**{"recall@10": 0.5, "ndcg@10": 0.25})
    shim.report({"mrr@10": 0.1})
    assert recorder.calls == [({"recall@10": 0.5, "ndcg@10": 0.25}, None), ({"mrr@10": 0.1}, None)]
    assert isinstance(quick_start.tune, compat._TuneReportingDicts) and quick_start.tune.Tuner is original.Tuner


def test_recbole_sequential_models_leave_anomaly_detection_off() -> None:
    """RecBole's sine.py switches autograd's anomaly detection on when imported (which every
    sequential model's import does), doubling SASRec's step time; recbole_llm's import undoes it."""
    import importlib

    import torch
    from recbole.utils import get_model

    for name in ("SASRec", "SINE", "BPR"):
        get_model(name)
        assert not torch.is_anomaly_enabled(), name
    sine = importlib.import_module("recbole.model.sequential_recommender.sine")
    try:
        importlib.reload(sine)  # the module's own side effect, as a plain import runs it
        assert torch.is_anomaly_enabled()
        # RecBole's models imported before recbole_llm: the repair cannot tell sine's switch from
        # the caller's, turns it off and says how to keep it
        with pytest.warns(UserWarning, match="turned off autograd's anomaly detection"):
            compat.repair_sine_anomaly_detection()
        assert not torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)
