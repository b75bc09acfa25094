"""Molar(text): the symmetric InfoNCE from its definition, the content user model against the
LM's own forward pass over each prefix, the stage-2 loss composed by hand, and both stages run on
the tiny atomic-file fixture with a tiny Llama (byte-level tokenizer, random weights) standing in for SmolLM2."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from recbole_llm.errors import UserError
from recbole_llm.model.molar import ContentUserModel, interleaved_mask, symmetric_info_nce
from tests.conftest import write_amazon_fixture

DATASET = "amazon-beauty"


TINY = {"MAX_ITEM_LIST_LENGTH": 6, "n_layers": 1, "train_batch_size": 256, "molar_user_layers": 2}


def test_symmetric_info_nce_is_the_mean_of_both_directions_cross_entropy() -> None:
    torch.manual_seed(1)
    a, b, tau = torch.randn(4, 3), torch.randn(4, 3), 0.3

    def cos(x, y):
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    rows, cols = a.tolist(), b.tolist()
    s = [[cos(rows[i], cols[j]) / tau for j in range(4)] for i in range(4)]
    a_to_b = sum(-s[i][i] + math.log(sum(math.exp(v) for v in s[i])) for i in range(4)) / 4
    b_to_a = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(4))) for j in range(4)) / 4
    assert symmetric_info_nce(a, b, tau).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-5)
    # scale-free (cosine) and lowest when the pairs coincide
    assert symmetric_info_nce(3 * a, b, tau).item() == pytest.approx(symmetric_info_nce(a, b, tau).item(), rel=1e-5)
    assert symmetric_info_nce(a, a, tau) < symmetric_info_nce(a, b, tau)


def test_interleaved_mask_lets_each_user_slot_see_its_prefix_and_itself() -> None:
    mask = interleaved_mask(3).int().tolist()
    # slots: i0 u0 i1 u1 i2 u2
    assert mask == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [1, 0, 1, 0, 0, 0],
                    [1, 0, 1, 1, 0, 0],
                    [1, 0, 1, 0, 1, 0],
                    [1, 0, 1, 0, 1, 1]]


def test_content_user_model_equals_the_lm_run_on_each_prefix_with_a_user_token(tiny_lm: Path) -> None:
    """At step t, the output is the LM's top layers (HF's own forward, causal mask, positions
    0..t+1) over items 0..t followed by the [User] vector, read at the [User] position."""
    import copy

    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    torch.manual_seed(2)
    user = torch.randn(16)
    model = ContentUserModel(lm, 2, user).eval()
    items = torch.randn(2, 5, 16)
    with torch.no_grad():
        out = model(items)
        top = copy.deepcopy(lm.model)
        top.layers = top.layers[1:]               # the top 2 of 3 layers, word embeddings unused
        top.config.num_hidden_layers = 2
        for row in range(2):
            for t in range(5):
                prefix = torch.cat([items[row, :t + 1], user[None]])[None]
                expected = top(inputs_embeds=prefix, use_cache=False).last_hidden_state[0, -1]
                torch.testing.assert_close(out[row, t], expected, rtol=1e-4, atol=1e-5)
    assert model.user.requires_grad and sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in lm.parameters())
    with pytest.raises(UserError, match="molar_user_layers=4: expected 1 to 3"):
        ContentUserModel(lm, 4, user)


@pytest.fixture(scope="module")
def molar_runs(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> dict:
    """Both stages, one epoch each, on the tiny amazon-beauty fixture (40 users, 30 items)."""
    from recbole_llm.runner import run

    root = tmp_path_factory.mktemp("molar")
    write_amazon_fixture(root / "data")
    record = run("Molar", DATASET, overrides={**TINY, "llm_encoder": str(tiny_lm)}, epochs=1, output=None,
                 run_dir=root / "all", verbose=False, data_path=root / "data")
    return {"root": root / "all", "record": record, "lm": tiny_lm, "data": root / "data"}


def _model(folder: Path):
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    state = load_checkpoint(folder)
    _, train, _, test = load_split(state["config"])
    model = get_model("Molar")(state["config"], train._dataset)
    model.load_state_dict(state["state_dict"], strict=False)
    return model.eval(), train, test


def test_both_stages_run_in_a_row_and_stage_two_keeps_the_id_model(molar_runs: dict) -> None:
    record = molar_runs["record"]
    assert [s["stage"] for s in record["stages"]] == ["ID SASRec", "content user model + post-alignment"]
    assert record["label"].startswith("Molar(text") and record["config"]["molar_stage"] == 2
    from recbole_llm.runner import load_checkpoint

    states = [load_checkpoint(molar_runs["root"] / f"stage-{s}") for s in (1, 2)]
    # learning_rate unset: stage 1 at RecBole's SASRec default, stage 2 at the paper's rate
    assert [state["config"]["learning_rate"] for state in states] == [1e-3, 1e-4]
    first, second = (state["state_dict"] for state in states)
    assert all(torch.equal(second[k], v) for k, v in first.items() if k.startswith("id_model."))  # frozen teacher
    assert any(k.startswith("user_model.layers.") for k in second)
    # the item vectors come from the prompted text, a feature file of their own
    fields = record["config"]["llm_feature_fields"]
    assert "prompt" in fields["item"]


def _rows(model, train, n: int):
    from recbole.data.interaction import Interaction

    batch = next(iter(train))
    keys = (model.ITEM_SEQ, model.ITEM_SEQ_LEN, model.POS_ITEM_ID, model.USER_ID)
    small = Interaction({k: batch[k][:n] for k in keys})
    return small, small[model.ITEM_SEQ], small[model.ITEM_SEQ_LEN], small[model.POS_ITEM_ID]


def _bce(xs: list[float], positive: bool) -> float:
    return sum(math.log1p(math.exp(-x)) if positive else math.log1p(math.exp(x)) for x in xs) / len(xs)


def test_stage_one_loss_is_the_id_sasrecs_bce_alone(molar_runs: dict, monkeypatch) -> None:
    """Stage 1: E[seq] + P[position], LayerNorm, RecBole's encoder under the causal mask; BCE of the
    next item and of one negative at every real position by dot product; no alignment term."""
    model, train, _ = _model(molar_runs["root"] / "stage-1")
    small, seq, lengths, target = _rows(model, train, 4)
    fixed = torch.randint(1, model.n_items, seq.shape)
    monkeypatch.setattr(model.negatives, "sample_negatives", lambda u, k: fixed)
    ids = model.id_model
    with torch.no_grad():
        loss = model.calculate_loss(small)
        pos, neg = [], []
        for row in range(4):
            n = int(lengths[row])
            history = seq[row, :n].tolist()
            following = history[1:] + [int(target[row])]
            padded = torch.tensor(history + [0] * (seq.shape[1] - n))[None]
            h = ids.norm(ids.item_embedding(padded) + ids.position_embedding.weight[:seq.shape[1]][None])
            states = ids.encoder(h, model.get_attention_mask(padded))[-1][0]
            for t in range(n):
                pos.append(float(states[t] @ ids.item_embedding.weight[following[t]]))
                neg.append(float(states[t] @ ids.item_embedding.weight[int(fixed[row, t])]))
    assert loss.item() == pytest.approx(_bce(pos, True) + _bce(neg, False), rel=1e-4)


@pytest.mark.parametrize("n_rows", [5, 2])
def test_stage_two_loss_is_bce_plus_weighted_symmetric_info_nce(molar_runs: dict, monkeypatch, n_rows: int) -> None:
    model, train, _ = _model(molar_runs["root"] / "stage-2")
    small, seq, lengths, target = _rows(model, train, n_rows)
    fixed = torch.randint(1, model.n_items, seq.shape)
    monkeypatch.setattr(model.negatives, "sample_negatives", lambda u, k: fixed)
    with torch.no_grad():
        loss = model.calculate_loss(small)
        pos, neg, content, ids = [], [], [], []
        for row in range(n_rows):
            n = int(lengths[row])
            history = seq[row, :n].tolist()
            following = history[1:] + [int(target[row])]
            for t in range(n):   # the user after items 0..t, against the next item and a negative
                prefix = torch.tensor(history[:t + 1])
                state = model.user_model(model.item_llm[prefix][None])[0, -1]
                score = lambda item: float(F.cosine_similarity(state, model.item_llm[item], dim=0)) / 0.07  # noqa: E731
                pos.append(score(following[t]))
                neg.append(score(int(fixed[row, t])))
            content.append(model.user_model(model.item_llm[torch.tensor(history)][None])[0, -1])
            padded = torch.tensor(history + [0] * (seq.shape[1] - n))[None]
            ids.append(model.id_model(padded, model.get_attention_mask(padded))[0, n - 1])
    a, b = torch.stack(content), torch.stack(ids)
    s = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / model.temperature
    info_nce = 0.5 * (-torch.diag(s.log_softmax(1)).mean() - torch.diag(s.log_softmax(0)).mean())
    assert model.align_weight == 0.1
    assert loss.item() == pytest.approx(_bce(pos, True) + _bce(neg, False) + 0.1 * info_nce.item(), rel=1e-4)


def test_an_image_vector_is_added_through_its_projection(molar_runs: dict) -> None:
    model, _, _ = _model(molar_runs["root"] / "stage-2")
    ids = torch.tensor([1, 3, 2])
    plain = model.item_vectors(ids)
    torch.testing.assert_close(plain, model.item_llm[ids])
    model.register_buffer("item_image", torch.randn(model.n_items, 5), persistent=False)
    model.image_projection = torch.nn.Linear(5, model.item_llm.shape[1], bias=False)
    with torch.no_grad():
        torch.testing.assert_close(model.item_vectors(ids), model.item_llm[ids] + model.item_image[ids] @ model.image_projection.weight.T)


def test_explicit_learning_rate_wins_over_the_stage_default(monkeypatch) -> None:
    from types import SimpleNamespace

    from recbole.trainer import Trainer

    from recbole_llm.model.molar import MolarTrainer

    monkeypatch.setattr(Trainer, "__init__", lambda self, config, model: None)
    for stage, given, expected in ((1, None, 1e-3), (2, None, 1e-4), (2, 0.05, 0.05)):
        config = {"learning_rate": given}
        MolarTrainer(config, SimpleNamespace(stage=stage))
        assert config["learning_rate"] == expected


def test_predict_gives_the_full_ranking_score_of_each_row_item(molar_runs: dict) -> None:
    from recbole.data.interaction import Interaction

    for stage in (1, 2):
        model, _, test = _model(molar_runs["root"] / f"stage-{stage}")
        interaction = next(iter(test))[0]
        items = torch.randint(1, model.n_items, (len(interaction[model.ITEM_SEQ]),))
        rows = Interaction({model.ITEM_SEQ: interaction[model.ITEM_SEQ], model.ITEM_SEQ_LEN: interaction[model.ITEM_SEQ_LEN],
                            model.ITEM_ID: items})
        with torch.no_grad():
            full = model.full_sort_predict(interaction)
            torch.testing.assert_close(model.predict(rows), full[torch.arange(len(items)), items], rtol=1e-4, atol=1e-4)


def test_full_ranking_scores_the_cosine_of_the_last_user_state_and_every_item_vector(molar_runs: dict) -> None:
    model, train, test = _model(molar_runs["root"] / "stage-2")
    from recbole_llm.data.features import preloaded_matrix
    from recbole_llm.runner import load_checkpoint

    config = load_checkpoint(molar_runs["root"] / "stage-2")["config"]
    raw = torch.from_numpy(preloaded_matrix(train._dataset, config, "item"))
    torch.testing.assert_close(model.item_llm[1:], raw[1:] - raw[1:].mean(0))   # centred over the catalogue
    assert not model.item_llm[0].any()                                           # padding stays zero
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
        row = 0
        n = int(lengths[row])
        user = model.user_model(model.item_llm[seq[row, :n]][None])[0, -1]
        expected = F.cosine_similarity(user[None], model.item_llm, dim=1) / 0.07   # cos / molar_score_temperature
        torch.testing.assert_close(scores[row], expected, rtol=1e-4, atol=1e-4)


def test_molar_refuses_an_encoder_that_is_not_a_causal_lm_and_a_stage_two_without_stage_one(
        molar_runs: dict, tmp_path: Path) -> None:
    from recbole_llm.runner import run

    settings = {**TINY, "llm_encoder": str(molar_runs["lm"]), "molar_stage": 2}
    data = molar_runs["data"]
    with pytest.raises(UserError, match="molar_init_from=RUN_FOLDER"):
        run("Molar", DATASET, overrides=settings, epochs=1, output=None, run_dir=tmp_path / "a", verbose=False,
            data_path=data)
    assert not (tmp_path / "a").exists()
    with pytest.raises(UserError, match="is not a Molar stage-1 run .*stage 2 starts from stage 1"):
        run("Molar", DATASET, overrides={**settings, "molar_init_from": str(molar_runs["root"] / "stage-2")},
            epochs=1, output=None, run_dir=tmp_path / "b", verbose=False, data_path=data)
    from recbole_llm.llm.encoders import causal_lm

    with pytest.raises(UserError, match="'minilm' is not a causal language model"):
        causal_lm("minilm")   # the user model's layers come from llm_encoder


def test_run_label_names_what_differs_from_the_default() -> None:
    from recbole_llm.model.molar import Molar

    assert Molar.run_label({"pipeline": True}) == "Molar(text)"
    assert Molar.run_label({"pipeline": True, "llm_encoder": "smollm2", "molar_user_layers": 2}) == "Molar(text)"
    assert Molar.run_label({"pipeline": True, "MAX_ITEM_LIST_LENGTH": 10}) == "Molar(text)"
    assert Molar.run_label({"pipeline": True, "MAX_ITEM_LIST_LENGTH": 50}) == "Molar(text, history 50)"
    assert Molar.run_label({"molar_stage": 1}) == "Molar(text, stage 1)"
    assert Molar.run_label({"molar_stage": 2}) == "Molar(text, stage 2)"
    assert Molar.run_label({}) == "Molar(text, stage 1)"
    assert Molar.run_label({"molar_stage": 1, "llm_feature_fields": {"item_image": "img"}}) == "Molar(text+image, stage 1)"
    assert Molar.run_label({"pipeline": True, "llm_encoder": "/m/qwen", "molar_user_layers": 4}) == \
        "Molar(text, qwen, 4 user layers)"
    assert Molar.run_label({"pipeline": True, "llm_feature_fields": {"item": "i", "item_image": "img"}}) == \
        "Molar(text+image)"


def test_run_label_names_every_training_setting_that_differs() -> None:
    """The defaults (the paper's where it gives them: batch 128, stage 2 at 1e-4; docs/molar.md for
    the rest) stay unnamed; the trainer writes each stage's rate into the config."""
    from recbole_llm.model.molar import Molar

    defaults = {"weight_decay": 0.0, "train_batch_size": 128, "item_text": "full", "molar_center_items": True,
                "molar_align_weight": 0.1, "molar_score_temperature": 0.07, "molar_align_temperature": 0.07,
                "molar_train_id": False, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.5,
                "attn_dropout_prob": 0.5}
    assert Molar.run_label({**defaults, "pipeline": True, "learning_rate": 1e-4}) == "Molar(text)"
    assert Molar.run_label({**defaults, "molar_stage": 1, "learning_rate": 1e-3}) == "Molar(text, stage 1)"
    assert Molar.run_label({**defaults, "molar_stage": 2, "learning_rate": None}) == "Molar(text, stage 2)"
    assert Molar.run_label({**defaults, "molar_stage": 2, "learning_rate": 1e-4}) == "Molar(text, stage 2)"
    assert Molar.run_label({**defaults, "learning_rate": 1e-3}) == "Molar(text, stage 1)"   # stage 1 by default
    assert Molar.run_label({**defaults, "molar_stage": 2, "learning_rate": 1e-3}) == "Molar(text, stage 2, lr 0.001)"
    assert Molar.run_label({**defaults, "molar_stage": 2, "molar_center_items": 1, "learning_rate": 1e-4}) == \
        "Molar(text, stage 2)"
    assert Molar.run_label({**defaults, "pipeline": True, "learning_rate": 1e-3}) == "Molar(text, lr 0.001)"
    changed = {"weight_decay": (0.01, "weight decay 0.01"), "train_batch_size": (64, "batch 64"),
               "item_text": ("title", "item text title"), "molar_center_items": (False, "centred items off"),
               "molar_align_weight": (1.0, "align weight 1"), "molar_score_temperature": (1.0, "score temperature 1"),
               "molar_align_temperature": (0.2, "align temperature 0.2"), "molar_train_id": (True, "trained ID model on"),
               "n_layers": (1, "ID layers 1"), "n_heads": (4, "ID heads 4"), "hidden_dropout_prob": (0.1, "ID dropout 0.1"),
               "attn_dropout_prob": (0.2, "ID attention dropout 0.2")}
    for key, (value, words) in changed.items():
        assert Molar.run_label({**defaults, "pipeline": True, "learning_rate": 1e-4, key: value}) == f"Molar(text, {words})", key


def test_user_model_owns_its_layers_and_accepts_one_to_all_layers(tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    for n in (1, 3):
        model = ContentUserModel(lm, n, torch.zeros(16))
        assert len(model.layers) == n
    # a copy: training it never changes the cached LM another run starts from
    assert model.layers[0].mlp.gate_proj.weight.data_ptr() != lm.model.layers[0].mlp.gate_proj.weight.data_ptr()
    assert model.norm.weight.data_ptr() != lm.model.norm.weight.data_ptr()
    with pytest.raises(UserError):
        ContentUserModel(lm, 0, torch.zeros(16))


def test_fresh_stage_two_starts_as_documented(molar_runs: dict) -> None:
    """A freshly built stage 2: SASRec's init for the ID model (normal(0, 0.02) weights, unit
    LayerNorms, zero biases, feed-forward 4 x width), the [User] vector at the centred item vectors'
    scale from the run's seed, the ID model frozen unless molar_train_id."""
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    first = load_checkpoint(molar_runs["root"] / "stage-1")["config"]   # stage 1 builds the ID model fresh
    _, train, _, _ = load_split(first)
    torch.manual_seed(0)
    fresh = get_model("Molar")(first, train._dataset)
    weights = fresh.id_model.item_embedding.weight.detach()
    assert abs(float(weights.mean())) < 0.01 and float(weights.std()) == pytest.approx(0.02, rel=0.25)
    norms = [m for m in fresh.id_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    assert all(not m.bias.any() for m in fresh.id_model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
    assert fresh.id_model.encoder.layer[0].feed_forward.dense_1.weight.shape == (4 * 16, 16)
    config = load_checkpoint(molar_runs["root"] / "stage-2")["config"]
    model = get_model("Molar")(config, train._dataset)
    expected = torch.randn(16, generator=torch.Generator().manual_seed(int(config["seed"]))) * model.item_llm[1:].std()
    torch.testing.assert_close(model.user_model.user.data, expected)
    assert not any(p.requires_grad for p in model.id_model.parameters())
    model.train()   # a frozen teacher stays in eval mode (no dropout) while the user model trains
    assert not model.id_model.training and model.user_model.training
    config["molar_train_id"] = True
    trained = get_model("Molar")(config, train._dataset)
    assert all(p.requires_grad for p in trained.id_model.parameters())
    trained.train()
    assert trained.id_model.training
    fresh.train()   # stage 1 trains its ID model
    assert fresh.id_model.training


def test_id_sasrec_builds_every_configured_size_and_keeps_padding_out_of_training() -> None:
    """Each ID-model setting reaches RecBole's layers (non-default values, so a dropped argument
    falls back to another value), and row 0 is the padding row."""
    from recbole_llm.model.molar import IDSASRec

    config = {"n_layers": 3, "n_heads": 4, "hidden_dropout_prob": 0.3, "attn_dropout_prob": 0.2,
              "hidden_act": "relu", "layer_norm_eps": 1e-6, "initializer_range": 0.02}
    model = IDSASRec(n_items=9, max_len=5, d=16, config=config)
    assert len(model.encoder.layer) == 3
    layer = model.encoder.layer[0]
    assert layer.multi_head_attention.num_attention_heads == 4
    assert layer.multi_head_attention.attn_dropout.p == 0.2
    assert layer.multi_head_attention.out_dropout.p == 0.3 and layer.feed_forward.dropout.p == 0.3
    assert layer.feed_forward.intermediate_act_fn is F.relu
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    assert model.item_embedding.padding_idx == 0


def test_stage_checkpoints_hold_no_item_vectors_and_a_bad_stage_is_refused(molar_runs: dict) -> None:
    """The frozen item vectors are rebuilt from the feature file, not saved with each checkpoint;
    a model built by RecBole's entry points names what molar_stage may be."""
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    state = load_checkpoint(molar_runs["root"] / "stage-2")
    assert "item_llm" not in state["state_dict"] and any(k.startswith("user_model.") for k in state["state_dict"])
    config = load_checkpoint(molar_runs["root"] / "stage-1")["config"]
    _, train, _, _ = load_split(config)
    config["molar_stage"] = "all"
    with pytest.raises(UserError, match="molar_stage=all runs both stages through `recbole-llm run`"):
        get_model("Molar")(config, train._dataset)
    for bad in ("x", "3"):
        config["molar_stage"] = bad
        with pytest.raises(UserError, match=rf"molar_stage='{bad}': expected all, 1 \(ID SASRec\) or 2"):
            get_model("Molar")(config, train._dataset)
