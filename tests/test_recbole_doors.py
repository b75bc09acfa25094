"""RecBole's own entry points after ``import recbole_llm`` (the pip-plugin promise): run_recbole,
run_recboles, objective_function and load_data_and_model work for every registered model, build
the LLM inputs they need, and give the numbers ``recbole-llm run`` gives."""
from __future__ import annotations

import json
import os
import queue
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401  (the hooks)
from recbole_llm.data.datasets import embedded_copy
from recbole_llm.data.features import FeatureFile, write_feature_file
from recbole_llm.errors import UserError
from recbole_llm.llm import profiles
from recbole_llm.llm.profiles import profile_feature_file, profile_files
from recbole_llm.runner import run
from tests.conftest import LAST_PLACE, assert_same_metrics, write_amazon_fixture, write_ctr_fixture
from tests.test_profiles import RecordingGenerator
from tests.test_tiger import TINY

DATASET = "amazon-beauty"
TINY_TIGER = {**TINY, "MAX_ITEM_LIST_LENGTH": 4}
# Every registered model, with the settings that keep it small on the fixture.
MODELS = {
    "AlphaRec": {},
    "AlphaRec(smollm2)": {"llm_encoder": "smollm2"},
    "LightGCNInfoNCE": {},
    "SimGCL": {},
    "RLMRecLightGCN": {}, "RLMRecSGL": {}, "RLMRecSimGCL": {},
    **{f"{m}({b})": {"backbone": b} for m in ("RLMRecCon", "RLMRecGen") for b in ("LightGCN", "SGL", "SimGCL")},
    "RLMRecCon(SGL, RecBole code)": {"backbone": "SGL", "backbone_code": "RecBole"},
    "LLMESR": {"MAX_ITEM_LIST_LENGTH": 4, "hidden_size": 8, "inner_size": 16, "sim_user_num": 3},
    "TIGER": TINY_TIGER,
    "Molar": {"molar_stage": 1, "MAX_ITEM_LIST_LENGTH": 4, "n_layers": 1},   # the packaged SmolLM2's prompted vectors
    "PAD": {"pad_stage": 1, "MAX_ITEM_LIST_LENGTH": 4, "hidden_size": 8, "n_layers": 1, "pad_text_layers": 1, "learning_rate": 0.001},
}


def test_every_registered_model_is_covered() -> None:
    """A model added to recbole-llm must join MODELS, so that RecBole's doors are tried on it."""
    from recbole_llm.registry import list_models

    covered = {name.split("(")[0] for name in MODELS} | set(CTR_MODELS) | set(LLMCF_SEQUENTIAL)  # the ctr-pool test below
    assert covered == {e.name for e in list_models() if e.source == "recbole-llm"}


def _metrics(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()}


def _untimed(result: dict) -> dict[str, float]:
    """The metrics, less TIGER's decoding speed (a timing, not a result)."""
    return {k: v for k, v in _metrics(result).items() if k != "tiger_decode_users_per_s"}


def _write_own_profiles(root: Path) -> None:
    """Profile vectors for every fixture user and item, as a user's own files (no metadata)."""
    from recbole_llm.data.features import dataset_ids

    folder = root / DATASET
    rng = np.random.default_rng(0)
    for kind, entity in (("user_profile", "user"), ("item_profile", "item")):
        ids = dataset_ids(folder, DATASET, entity)
        ff = profile_feature_file(folder, DATASET, kind)
        write_feature_file(ff, ids, rng.normal(size=(len(ids), 16)), {})
        ff.meta_path.unlink()


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> Path:
    root = tmp_path_factory.mktemp("doors-data")
    write_amazon_fixture(root)
    _write_own_profiles(root)
    return root


def _recbole_config(root: Path, tmp_path: Path, **settings) -> dict:
    return {"data_path": str(root), "epochs": 1, "checkpoint_dir": str(tmp_path / "saved"), **settings}


@pytest.mark.parametrize("name", list(MODELS))
def test_run_recbole_then_load_data_and_model(name: str, fixture_root: Path, tmp_path: Path) -> None:
    """run_recbole trains the model (its LLM inputs built on the way), and load_data_and_model
    reloads the checkpoint into a model that scores the test split exactly as the trained one."""
    from recbole.quick_start import load_data_and_model, run_recbole
    from recbole.utils import get_trainer

    model = name.split("(")[0]
    result = run_recbole(model=model, dataset=DATASET, config_dict=_recbole_config(fixture_root, tmp_path, **MODELS[name]))
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0
    checkpoint = next((tmp_path / "saved").glob(f"{model}-*.pth"))
    config, net, _, _, _, test_data = load_data_and_model(str(checkpoint))
    assert type(net).__name__ == model
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert _untimed(again) == _untimed(result["test_result"])


CTR_MODELS = {
    "BAHE": lambda lm: {"llm_encoder": str(lm), "bahe_split_layer": 2},  # its behaviour table built on the way
    "LLMCFDeepFM": lambda lm: {},
    "LLMCF": lambda lm: {"cot_generator": str(lm), "cot_rows": 24, "cot_decoding": "greedy",  # its CoTs written on the way
                         "cot_max_new_tokens": 6},
}
# LLM-CF's retrieval use, under the sequential protocol of the same fixture: inside RecBole's doors it
# loads the dataset a second time, under the ctr protocol, for its in-context pool.
LLMCF_SEQUENTIAL = {
    "LLMCFSASRec": lambda lm: {"num_negatives": 8},
    "LLMCFRetrieval": lambda lm: {**CTR_MODELS["LLMCF"](lm), "num_negatives": 8},
}


@pytest.mark.parametrize("model", sorted(CTR_MODELS) + sorted(LLMCF_SEQUENTIAL))
def test_a_ctr_model_through_run_recbole_then_load_data_and_model(model: str, tiny_lm: Path, tmp_path: Path) -> None:
    """A ctr-protocol model (and LLM-CF's sequential use, which reads the ctr protocol's rows) through
    RecBole's own doors; the reloaded checkpoint scores the test split as the trained model did, and
    as `recbole-llm run`."""
    from recbole.quick_start import load_data_and_model, run_recbole
    from recbole.utils import get_trainer

    write_ctr_fixture(tmp_path / "data")
    settings = {**{**CTR_MODELS, **LLMCF_SEQUENTIAL}[model](tiny_lm), "epochs": 2}
    result = run_recbole(model=model, dataset="tiny-ctr",
                         config_dict={**_recbole_config(tmp_path / "data", tmp_path), **settings})
    assert set(result["test_result"]) == ({"auc", "logloss"} if model in CTR_MODELS else
                                          {"hit@5", "hit@10", "ndcg@5", "ndcg@10"})
    config, net, _, _, _, test_data = load_data_and_model(str(next((tmp_path / "saved").glob(f"{model}-*.pth"))))
    again = get_trainer(config["MODEL_TYPE"], config["model"])(config, net).evaluate(test_data, load_best_model=False)
    assert _metrics(again) == _metrics(result["test_result"])
    record = run(model, "tiny-ctr", overrides=settings, data_path=tmp_path / "data", output=None, verbose=False)
    assert_same_metrics(result["test_result"], {k: v for k, v in record["test"].items() if k in result["test_result"]})


@pytest.mark.filterwarnings("ignore:`report` is meant to only be called inside")  # Ray's, outside a Tune trial
def test_objective_function(fixture_root: Path, tmp_path: Path) -> None:
    """RecBole's tuning objective, the model named in its config dict, gives run_recbole's numbers."""
    from recbole.quick_start import objective_function, run_recbole

    settings = _recbole_config(fixture_root, tmp_path, model="AlphaRec", dataset=DATASET)
    tuned = objective_function(config_dict=settings, saved=False)
    assert tuned["model"] == "AlphaRec"
    assert _metrics(tuned["test_result"]) == _metrics(run_recbole(config_dict=settings, saved=False)["test_result"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="run_recboles is RecBole's per-GPU worker (NCCL, CUDA only)")
def test_run_recboles_on_one_gpu(fixture_root: Path, tmp_path: Path) -> None:
    """RecBole's distributed worker (what run_recbole(nproc=N) spawns), as one process on one GPU."""
    from recbole.quick_start import run_recboles

    results: queue.Queue = queue.Queue()
    distributed = {"nproc": 1, "world_size": 1, "offset": 0, "ip": "localhost", "port": "29517", "gpu_id": "0"}
    run_recboles(0, "AlphaRec", DATASET, None,
                 {"config_dict": _recbole_config(fixture_root, tmp_path, **distributed), "queue": results})
    assert 0.0 <= results.get_nowait()["test_result"]["ndcg@10"] <= 1.0


def test_objective_function_inside_ray_tune(fixture_root: Path, tmp_path: Path, session_home: Path) -> None:
    """RecBole's objective_function as a Ray Tune trainable: it reports its test metrics to Tune
    (it called ``tune.report(**metrics)``, which today's Ray refuses inside a trial)."""
    import sys

    import ray
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trainable below, in the workers
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RECBOLE_LLM_HOME": str(session_home)}})
    try:
        tuner = tune.Tuner(
            tune.with_parameters(_trainable, fixed=_recbole_config(fixture_root, tmp_path, model="AlphaRec", dataset=DATASET)),
            param_space={"learning_rate": tune.grid_search([0.001])},
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors, results.errors
    assert 0.0 <= results[0].metrics["ndcg@10"] <= 1.0


def _trainable(config: dict, fixed: dict) -> None:
    import recbole_llm  # noqa: F401  (a Ray worker is a fresh process: the plugin must be imported there)
    from recbole.quick_start import objective_function

    objective_function(config_dict={**fixed, **config}, saved=False)  # its own tune.report is what Tune sees


@pytest.mark.parametrize("model", ["AlphaRec", "RLMRecCon"])
def test_run_recbole_equals_recbole_llm_run_on_the_embedded_dataset(model: str, tmp_path: Path) -> None:
    """The same settings and seed through both doors give identical numbers, with a seed other
    than split_seed (both seed the split by split_seed). RLMRec uses the profiles that ship with
    the package (only encoded here), and nothing is written into site-packages."""
    from recbole.quick_start import run_recbole

    before = sorted(os.listdir(embedded_copy()))
    ours = run(model, "ml-100k", epochs=1, seed=7, output=None, verbose=False, run_dir=tmp_path / "ours")
    theirs = run_recbole(model=model, dataset="ml-100k",
                         config_dict={"epochs": 1, "seed": 7, "checkpoint_dir": str(tmp_path / "theirs")})
    assert_same_metrics(theirs["test_result"], ours["test"])
    assert float(theirs["best_valid_score"]) == pytest.approx(ours["best_valid_score"], abs=LAST_PLACE)
    assert sorted(os.listdir(embedded_copy())) == before
    if model == "RLMRecCon":
        meta = json.loads((Path(ours["config"]["data_path"]) / "ml-100k.user_profile_smollm2_minilm.json").read_text())
        assert meta["count"] == 943 and meta["generator"] == "smollm2"


def test_run_recbole_equals_recbole_llm_run_for_tiger(fixture_root: Path, tmp_path: Path) -> None:
    from recbole.quick_start import run_recbole

    ours = run("TIGER", DATASET, data_path=fixture_root, epochs=1, seed=7, overrides=TINY_TIGER, output=None,
               verbose=False, run_dir=tmp_path / "ours")
    theirs = run_recbole(model="TIGER", dataset=DATASET, config_dict=_recbole_config(fixture_root, tmp_path, seed=7, **TINY_TIGER))
    recboles = _untimed(theirs["test_result"])
    # recbole-llm adds long-tail group metrics to sequential runs; RecBole's own metrics are equal.
    assert_same_metrics(recboles, {k: v for k, v in _untimed(ours["test"]).items() if k in recboles})
    assert {"ndcg@10", "recall@10", "tiger_invalid_beam_rate"} <= set(recboles)


def test_a_config_that_names_its_own_feature_file_uses_it(tmp_path: Path) -> None:
    """AlphaRec given the user's own item vectors (RecBole's own feature-file settings) reads exactly
    them, aligned to RecBole's ids, and no encoder runs."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_llm.model.alpharec import AlphaRec

    root = tmp_path / "data"
    folder = write_amazon_fixture(root)
    rng = np.random.default_rng(1)
    vectors = {f"B{i:04d}": rng.normal(size=5).round(4) for i in range(30)}
    lines = ["my_iid:token\tmy_vec:float_seq"] + [f"{k}\t{' '.join(map(str, v))}" for k, v in vectors.items()]
    (folder / f"{DATASET}.myvec").write_text("\n".join(lines) + "\n")
    # As a RecBole user attaches any feature file (load_col may leave it out: it is loaded whole).
    own = {"additional_feat_suffix": ["myvec"], "alias_of_item_id": ["my_iid"], "preload_weight": {"my_iid": "my_vec"},
           "llm_feature_fields": {"item": "my_iid"}, "data_path": str(root)}
    config = Config(model="AlphaRec", dataset=DATASET, config_dict=own)
    train, *_ = data_preparation(config, create_dataset(config))
    net = AlphaRec(config, train._dataset)
    for token, vector in vectors.items():
        np.testing.assert_allclose(net.item_llm[train._dataset.token2id("item_id", token)].numpy(), vector, rtol=1e-6)
    assert not list(folder.glob(f"{DATASET}.item_minilm*"))  # nothing encoded

    bad = {**own, "llm_feature_fields": {"item": "no_such_field"}}
    with pytest.raises(UserError, match="llm_feature_fields names 'no_such_field'.*no preload_weight loads it"):
        Config(model="AlphaRec", dataset=DATASET, config_dict=bad)


def test_missing_profiles_are_generated_or_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A dataset without profiles: with llm_generate False the error names the command and the
    expected time; otherwise they are written (announced with the estimate) and the run goes on."""
    from recbole.config import Config

    root = tmp_path / "data"
    write_amazon_fixture(root)
    settings = {"data_path": str(root), "epochs": 1}
    expected = profiles.expected_seconds(30, 40, profiles.ProfileSettings())
    assert expected == pytest.approx(30 * 3.75 + 40 * 7.5)  # the measured rates of checked generation
    assert profiles.expected_seconds(30, 40, profiles.ProfileSettings(checked=False, max_new_tokens=48)) == \
        pytest.approx((30 * 1.4 + 40 * 4.5) / 2)
    with pytest.raises(UserError, match=r"30 item and 40 user profiles of amazon-beauty with smollm2 \(about 7 min"
                                        r".*recbole-llm profile -d amazon-beauty --generator smollm2 --encoder minilm "
                                        f"--data-path {root}"):
        Config(model="RLMRecCon", dataset=DATASET, config_dict={**settings, "llm_generate": False})
    with pytest.raises(UserError, match=r"\(about 4 min.*--encoder minilm --no-checked --data-path"):
        Config(model="RLMRecCon", dataset=DATASET, config_dict={**settings, "llm_generate": False, "profile_checks": False})
    assert not list((root / DATASET).glob("*profile*"))  # nothing half-written

    fake = RecordingGenerator()
    monkeypatch.setattr(profiles, "ProfileGenerator", lambda *a, **k: fake)
    with caplog.at_level("WARNING", logger="recbole_llm"):  # the stand-in writes plain answers: unchecked
        config = Config(model="RLMRecCon", dataset=DATASET, config_dict={**settings, "profile_checks": False})
    assert "generating 30 item and 40 user profiles of amazon-beauty with smollm2 (about 4 min" in caplog.text
    assert len(fake.prompts) == 70 and set(config["llm_feature_fields"]) == {"user_profile", "item_profile"}
    items_path, users_path = profile_files(root / DATASET, DATASET, "smollm2")
    assert len(items_path.read_text().splitlines()) == 30 and len(users_path.read_text().splitlines()) == 40


def test_bad_llm_inputs_through_recboles_door(fixture_root: Path, tmp_path: Path) -> None:
    """Through run_recbole as through the CLI: one line naming the file and the fix."""
    from recbole.quick_start import run_recbole

    from recbole_llm.cli import main

    # A dataset of one's own (no YAML) whose .item file has no text column.
    root = tmp_path / "notext"
    folder = write_amazon_fixture(root, "shop")
    rows = (folder / "shop.item").read_text().splitlines()
    (folder / "shop.item").write_text("\n".join(
        ["item_id:token\tprice:float"] + [f"{r.split(chr(9))[0]}\t1.0" for r in rows[1:]]) + "\n")
    with pytest.raises(UserError, match=r"shop.item has no text column \(its columns are item_id:token, price:float\); "
                                        "expected a token or token_seq column"):
        run_recbole(model="AlphaRec", dataset="shop", config_dict=_recbole_config(root, tmp_path))

    # An item vector file of the user's own, of the wrong size for the encoder it is named after.
    root = tmp_path / "wrongdim"
    folder = write_amazon_fixture(root)
    own = FeatureFile(folder, DATASET, "item", "minilm_title")  # AlphaRec reads the titles' vectors
    write_feature_file(own, [f"B{i:04d}" for i in range(30)], np.ones((30, 8)), {})
    own.meta_path.unlink()
    with pytest.raises(UserError, match=r"amazon-beauty.item_minilm_title holds 8-d vectors; expected 384-d \(minilm\)"):
        run_recbole(model="AlphaRec", dataset=DATASET, config_dict=_recbole_config(root, tmp_path))
    assert main(["run", "-m", "AlphaRec", "-d", DATASET, "--data-path", str(root), "--no-record"]) == 2

    # Profile vectors written for other users: some, then all of them.
    root = tmp_path / "otherids"
    folder = write_amazon_fixture(root)
    _write_own_profiles(root)
    ff = profile_feature_file(folder, DATASET, "user_profile")
    written = ff.path.read_text()
    ff.path.write_text(written.replace("\nU00", "\nX00"))  # users U000-U009
    with pytest.raises(UserError, match=r"10 users of amazon-beauty have no vector in amazon-beauty.user_profile_smollm2_minilm"):
        run_recbole(model="RLMRecCon", dataset=DATASET, config_dict=_recbole_config(root, tmp_path))
    ff.path.write_text(written.replace("\nU0", "\nX0"))
    with pytest.raises(UserError, match=r"amazon-beauty.user_profile_smollm2_minilm: none of its 40 "
                                        r"user_profile_smollm2_minilm_id ids is an id of amazon-beauty's interactions"):
        run_recbole(model="RLMRecCon", dataset=DATASET, config_dict=_recbole_config(root, tmp_path))
