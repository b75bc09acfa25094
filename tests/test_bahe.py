"""BAHE: the offline behaviour table against the LM's own forward pass, the trained hierarchy
against the LM's upper layers run by hand, the BCE from its formula, and a run under the ctr
protocol on the tiny fixture, with a tiny Llama standing in for SmolLM2."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from recbole_llm.errors import UserError
from recbole_llm.llm.encoders import LowerLayersEncoder
from tests.conftest import write_ctr_fixture

TEXTS = ["Title: Product 1 lotion.", "Brand: x.", "Title: a much longer product name, with a brand."]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_offline_table_is_the_lower_layers_output_pooled_over_each_texts_tokens(tiny_lm: Path, pooling: str) -> None:
    """Each text alone through HF's own forward: hidden_states[k] is the residual stream after the
    first k layers (no final norm); its mean over the text's tokens (or its last token) is the row,
    whatever padding the batch needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    table = LowerLayersEncoder(str(tiny_lm), 2, pooling).encode(TEXTS, batch_size=3, progress=False)
    for row, text in enumerate(TEXTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            states = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
        expected = states.mean(0) if pooling == "mean" else states[-1]
        torch.testing.assert_close(torch.from_numpy(table[row]), expected, rtol=1e-4, atol=1e-5)


def test_split_layer_and_lm_are_checked(tiny_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="bahe_split_layer=3: expected 1 to 2"):
        LowerLayersEncoder(str(tiny_lm), 3)
    from recbole_llm.llm.decoder import check_split

    for split in (1, 2):  # one layer below, one above: the two ends of a 3-layer LM
        check_split(split, 3)
    for split in (0, 3):
        with pytest.raises(UserError, match=f"bahe_split_layer={split}: expected 1 to 2"):
            check_split(split, 3)
    with pytest.raises(UserError, match="bahe_pooling='max': expected mean or last"):
        LowerLayersEncoder(str(tiny_lm), 1, "max")
    (tmp_path / "not-an-lm").mkdir()
    with pytest.raises(UserError, match="is not a causal language model"):
        LowerLayersEncoder(str(tmp_path / "not-an-lm"), 1)


@pytest.fixture(scope="module")
def bahe_run(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> dict:
    from recbole_llm.runner import run

    root = tmp_path_factory.mktemp("bahe")
    write_ctr_fixture(root / "data")
    record = run("BAHE", "tiny-ctr", overrides={"llm_encoder": str(tiny_lm), "bahe_split_layer": 2,
                                               "learning_rate": 1e-2}, epochs=3, output=None,
                 run_dir=root / "run", verbose=False, data_path=root / "data")
    return {"record": record, "root": root, "lm": tiny_lm}


def _model(bahe_run: dict):
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    state = load_checkpoint(bahe_run["root"] / "run")
    _, train, _, test = load_split(state["config"], check_topk=False)
    model = get_model("BAHE")(state["config"], train._dataset)
    model.load_state_dict(state["state_dict"])
    return model.eval(), train, test


def test_bahe_runs_under_the_ctr_protocol(bahe_run: dict) -> None:
    record = bahe_run["record"]
    assert record["protocol"] == "ctr" and record["label"] == "BAHE(tiny_llama, split 2)"
    assert set(record["test"]) == {"auc", "logloss", "gauc"}
    assert record["config"]["llm_feature_fields"]["item_lower"] == "item_lower_tiny_llama_k2_mean_id"
    assert (bahe_run["root"] / "data" / "tiny-ctr" / "tiny-ctr.item_lower_tiny_llama_k2_mean").is_file()
    # only the upper layer(s), the norm and the head train: the LM's width, one layer of three
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(bahe_run["lm"])
    one_layer = sum(p.numel() for p in lm.model.layers[2].parameters())
    head = (2 * 16 * 256 + 256) + (256 * 64 + 64) + (64 + 1)
    assert record["n_params"] == one_layer + 16 + head


def test_the_label_names_every_departure_from_the_defaults() -> None:
    from recbole_llm.model.bahe import BAHE

    assert BAHE.run_label({}) == "BAHE"
    assert BAHE.run_label({"llm_encoder": "smollm2", "bahe_split_layer": 28, "bahe_pooling": "mean"}) == "BAHE"
    assert BAHE.run_label({"llm_encoder": "/models/Qwen2-0.5B", "bahe_split_layer": 28}) == "BAHE(qwen2_0_5b)"
    assert BAHE.run_label({"bahe_split_layer": 26, "bahe_pooling": "last"}) == "BAHE(split 26, last pooling)"


@pytest.mark.parametrize("part", ["train", "test"])
def test_scores_are_the_dnn_over_the_upper_layers_outputs_of_history_and_candidate(bahe_run: dict, part: str) -> None:
    """Q_u: the LM's top layer and final norm (HF's own forward on inputs_embeds) over the unpadded
    history's table rows, read at the last; Q_i: the same over the candidate's row alone; the
    score is sigmoid(DNN(Q_u ⊕ Q_i)) and the loss the mean BCE of the logits against the labels.
    Training rows include histories of a single behaviour."""
    from transformers import AutoModelForCausalLM

    model, train, test = _model(bahe_run)
    top = copy.deepcopy(AutoModelForCausalLM.from_pretrained(bahe_run["lm"]).model)
    top.layers = top.layers[2:]
    top.config.num_hidden_layers = 1
    top.layers.load_state_dict(model.upper.layers.state_dict())
    top.norm.load_state_dict(model.upper.norm.state_dict())
    batch = next(iter(test))[0] if part == "test" else train.dataset.inter_feat[:64]
    seq, lengths, target = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], batch[model.ITEM_ID]
    assert part == "test" or lengths.min() == 1
    labels = batch[model.LABEL].float()
    with torch.no_grad():
        scores = model.predict(batch)
        loss = model.calculate_loss(batch)
        logits = []
        for row in range(len(seq)):
            history = model.behaviours[seq[row, :int(lengths[row])]][None]
            user = top(inputs_embeds=history, use_cache=False).last_hidden_state[0, -1]
            item = top(inputs_embeds=model.behaviours[target[row]][None, None], use_cache=False).last_hidden_state[0, 0]
            logits.append(float(model.head(torch.cat([user, item])[None])[0, 0]))
    assert lengths.max() > 1  # histories of several behaviours are in the batch
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-x)) for x in logits], abs=1e-5)
    bce = sum(math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x)) for x, y in zip(logits, labels.tolist()))
    assert loss.item() == pytest.approx(bce / len(logits), rel=1e-4)


def test_the_head_is_relu_mlp_then_one_logit(bahe_run: dict) -> None:
    """DNN(x) = w3 . relu(W2 relu(W1 x + b1) + b2) + b3 (dropout off in eval), sizes 2d -> 256 -> 64 -> 1."""
    model, _, _ = _model(bahe_run)
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 256), (256, 64), (64, 1)]
    x = torch.randn(5, 32)
    h = torch.relu(x @ linears[0].weight.T + linears[0].bias)
    h = torch.relu(h @ linears[1].weight.T + linears[1].bias)
    expected = h @ linears[2].weight.T + linears[2].bias
    with torch.no_grad():
        torch.testing.assert_close(model.head(x), expected)


@pytest.mark.parametrize("hidden", [[8], [8, 6, 4]])
def test_the_head_follows_mlp_hidden_size_and_dropout_prob(bahe_run: dict, hidden: list[int]) -> None:
    """Any number of hidden layers: 2d -> each size in turn -> one logit, dropout as configured."""
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    config = load_checkpoint(bahe_run["root"] / "run")["config"]
    _, train, _, _ = load_split(config, check_topk=False)
    config["mlp_hidden_size"], config["dropout_prob"] = hidden, 0.3
    model = get_model("BAHE")(config, train._dataset)
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    sizes = [32, *hidden, 1]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(sizes, sizes[1:]))
    dropouts = [m.p for m in model.head.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.3] * len(hidden)


def test_training_moves_the_upper_layers_and_never_the_offline_table(bahe_run: dict, tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    from recbole_llm.data.features import FeatureFile, read_feature_file

    model, train, _ = _model(bahe_run)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    before = lm.model.layers[2].mlp.down_proj.weight
    assert not torch.allclose(model.upper.layers[0].mlp.down_proj.weight, before)
    ff = FeatureFile(bahe_run["root"] / "data" / "tiny-ctr", "tiny-ctr", "item_lower", "tiny_llama_k2_mean")
    ids, vectors = read_feature_file(ff)
    rows = train._dataset.token2id(train._dataset.iid_field, ids)
    torch.testing.assert_close(model.behaviours[torch.as_tensor(rows)], torch.from_numpy(vectors))
    assert not model.behaviours.requires_grad and "behaviours" not in model.state_dict()
    # BAHE trains copies: the LM the process keeps loaded (for encoding, for the next model) is untouched
    from recbole_llm.llm.encoders import causal_lm

    cached = causal_lm(str(tiny_lm))[1]
    for mine, fresh in zip(cached.state_dict().values(), lm.state_dict().values()):
        torch.testing.assert_close(mine, fresh)


def test_encoders_sharing_one_cached_lm_pad_each_their_own_way(tiny_lm: Path) -> None:
    """The next-token encoder pads left and BAHE's lower layers pad right, on one cached tokenizer:
    encoding with one never changes what the other gives."""
    from recbole_llm.llm.encoders import NextTokenEncoder

    next_token = NextTokenEncoder(tiny_lm, "tiny")
    before = next_token.encode(TEXTS, batch_size=3, progress=False)
    lower = LowerLayersEncoder(str(tiny_lm), 2).encode(TEXTS, batch_size=3, progress=False)
    after = next_token.encode(TEXTS, batch_size=3, progress=False)
    assert (before == after).all()
    alone = [next_token.encode([text], progress=False)[0] for text in TEXTS]  # no padding at all
    torch.testing.assert_close(torch.from_numpy(before), torch.from_numpy(__import__("numpy").stack(alone)),
                               rtol=1e-4, atol=1e-5)
    assert lower.shape == before.shape


def test_copied_layers_are_the_callers_own_and_run_eager_attention(tiny_lm: Path) -> None:
    """The copies take the additive mask as given (eager attention) while the LM keeps its own
    attention setting; training a copy leaves the LM's layers as they were."""
    from transformers import AutoModelForCausalLM

    from recbole_llm.llm.decoder import copied_layers

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm, attn_implementation="sdpa")
    before = copy.deepcopy(lm.model.layers[1].state_dict())
    layers = copied_layers(lm, 1, 3)
    assert len(layers) == 2
    assert [layer.self_attn.config._attn_implementation for layer in layers] == ["eager", "eager"]
    assert lm.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.config._attn_implementation == "sdpa" for layer in lm.model.layers)
    with torch.no_grad():
        for p in layers[0].parameters():
            p.add_(1.0)
    for name, value in lm.model.layers[1].state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_reading_one_position_equals_the_full_stack_read_there(tiny_lm: Path, n_layers: int) -> None:
    """``run_layers_to_last`` (the top layer computed for one query per row) against HF's own forward
    of the unpadded rows (``inputs_embeds``, the residual stream after ``n_layers`` layers) read at
    each row's last real position, values and gradients, in training mode; rows of lengths 5, 1, 3
    right-padded with noise that must not matter. In float64 (HF's eager softmax is float32 still):
    the tiny LM's sharp attention lifts float32 noise to 1e-4 over three layers."""
    from transformers import AutoModelForCausalLM

    from recbole_llm.llm.decoder import causal_padded_mask, copied_layers, run_layers_to_last

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    lm = lm.double()
    layers = copied_layers(lm, 3 - n_layers, 3).train()
    torch.manual_seed(0)
    h = torch.randn(3, 5, 16, dtype=torch.float64)
    lengths = torch.tensor([5, 1, 3])
    real = torch.arange(5)[None] < lengths[:, None]
    positions = torch.arange(5)[None].expand(3, -1)
    out = run_layers_to_last(layers, lm.model.rotary_emb, h, positions, causal_padded_mask(real), lengths - 1)
    reference = copy.deepcopy(lm.model)  # the LM's own attention code and masks, not our copies
    reference.layers = reference.layers[3 - n_layers:].train()
    reference.layers.load_state_dict(layers.state_dict())
    reference.config.num_hidden_layers = n_layers
    reference.norm = torch.nn.Identity()  # the residual stream, as run_layers returns it
    expected = torch.stack([reference(inputs_embeds=h[row, :int(n)][None], use_cache=False).last_hidden_state[0, -1]
                            for row, n in enumerate(lengths)])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-8)
    weights = torch.randn(3, 16, dtype=torch.float64)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for mine, theirs in zip(layers.parameters(), reference.layers.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["Qwen2", "Qwen3"])
def test_reading_one_position_in_other_llama_like_families(family: str) -> None:
    """Qwen2 (biased q/k/v projections) takes the one-position path; Qwen3's per-head q/k norms are
    not part of it, so its layers run whole and are read there: both equal the whole stack's output."""
    import transformers

    from recbole_llm.llm.decoder import _plain_llama_layer, causal_padded_mask, copied_layers, run_layers, run_layers_to_last

    config = getattr(transformers, f"{family}Config")(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, head_dim=4)
    torch.manual_seed(0)
    lm = getattr(transformers, f"{family}ForCausalLM")(config).double()
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(std=0.5)
    layers = copied_layers(lm, 0, 2)
    assert _plain_llama_layer(layers[-1]) == (family == "Qwen2")
    h = torch.randn(2, 4, 16, dtype=torch.float64)
    real = torch.tensor([[True, True, True, False], [True, True, True, True]])
    positions = torch.arange(4)[None].expand(2, -1)
    whole = run_layers(layers, lm.model.rotary_emb, h, positions, causal_padded_mask(real))[torch.arange(2), torch.tensor([2, 3])]
    one = run_layers_to_last(layers, lm.model.rotary_emb, h, positions, causal_padded_mask(real), torch.tensor([2, 3]))
    torch.testing.assert_close(one, whole, rtol=1e-6, atol=1e-8)
