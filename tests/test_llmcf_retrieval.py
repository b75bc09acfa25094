"""LLM-CF(SASRec): the official SASRec encoder against a hand-written forward pass, the sampled
softmax from its formula, the ranking pool placed on the sequential training rows, retrieval by
history alone under the leakage rule, the user vector SASRec(h) + 0.1 w with every token rebuilt by
hand, the official initialisation, and runs of both models under the sequential protocol."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.errors import UserError
from recbole_llm.model.llmcf_retrieval import LLMCFRetrieval, LLMCFSASRec, sampled_softmax_loss
from tests.conftest import split_for, write_ctr_fixture

DATASET = "tiny-ctr"
SMALL = {"cot_rows": 24, "cot_decoding": "greedy", "cot_max_new_tokens": 6, "train_batch_size": 16, "num_negatives": 8}


@pytest.fixture(scope="module")
def built(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory, session_home: Path):
    root = tmp_path_factory.mktemp("llmcf-retrieval") / "data"
    write_ctr_fixture(root)
    model_class, config, _, (train, _, test) = split_for("LLMCFRetrieval", DATASET, root,
                                                         {**SMALL, "cot_generator": str(tiny_lm)})
    return {"model": model_class(config, train._dataset).eval(), "train": train, "test": test, "config": config,
            "root": root, "lm": tiny_lm}


def _layer_norm(x, norm):
    """The official LayerNorm, eps 1e-8 (not torch's 1e-5)."""
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-8) * norm.weight + norm.bias


def _sasrec_by_hand(model, items):
    """pmixer's SASRec, written out: E h sqrt(d) + P, padding zeroed; per block Q = LN(x),
    x = Q + causal attention(Q, x, x), x = LN(x), x = x + W2 relu(W1 x + b1) + b2, padding zeroed;
    a last LN, the output at the last real item."""
    enc, d = model.encoder, model.item_emb.embedding_dim
    real = (items != 0).float().unsqueeze(-1)
    x = (model.item_emb.weight[items] * math.sqrt(d) + enc.positions.weight[:items.shape[1]]) * real
    length = items.shape[1]
    for b in range(1):  # the official single block
        att = enc.attentions[b]
        heads, hd = att.num_heads, d // att.num_heads
        q_in = _layer_norm(x, enc.attention_norms[b])
        wq, wk, wv = att.in_proj_weight.split(d)
        bq, bk, bv = att.in_proj_bias.split(d)
        q, k, v = q_in @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
        out = torch.zeros_like(x)
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(hd)
            future = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
            out[..., cols] = torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v[..., cols]
        x = q_in + out @ att.out_proj.weight.T + att.out_proj.bias
        x = _layer_norm(x, enc.forward_norms[b])
        ff = enc.forwards[b]
        hidden = torch.relu(x @ ff.conv1.weight[:, :, 0].T + ff.conv1.bias)
        x = (x + hidden @ ff.conv2.weight[:, :, 0].T + ff.conv2.bias) * real
    x = _layer_norm(x, enc.last_norm)
    last = (items != 0).sum(1) - 1
    return x[torch.arange(len(items)), last]


def test_sasrec_encoder_is_the_official_pre_norm_query_block(built) -> None:
    model = built["model"]
    torch.manual_seed(3)
    items = torch.randint(1, model.n_items, (6, model.max_seq_length))
    for row, length in enumerate([5, 4, 3, 2, 1, 5]):
        items[row, length:] = 0  # RecBole pads at the end
    with torch.no_grad():
        torch.testing.assert_close(model.sequence_vector(items), _sasrec_by_hand(model, items), rtol=1e-4, atol=1e-4)
    # eps moves the output below the tolerance above: every LayerNorm is checked to be the official's
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 and {m.eps for m in norms} == {1e-8}
    # dropout acts only in training: each of its places carries LLM-CF(SASRec)'s 0.2
    assert model.encoder.attentions[0].dropout == 0.2
    assert [m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)] == [0.2] * 3


def test_sampled_softmax_from_its_formula_with_the_target_masked_out_of_the_negatives() -> None:
    torch.manual_seed(0)
    user, target_emb = torch.randn(3, 4), torch.randn(3, 4)
    target = torch.tensor([5, 2, 9])
    negatives = torch.tensor([2, 7, 5, 1])
    negative_emb = torch.randn(4, 4)
    expected = 0.0
    for b in range(3):
        pos = math.exp(float(user[b] @ target_emb[b]))
        rest = sum(math.exp(float(user[b] @ negative_emb[n])) for n in range(4) if int(negatives[n]) != int(target[b]))
        expected += -math.log(pos / (pos + rest)) / 3
    assert float(sampled_softmax_loss(user, target_emb, target, negatives, negative_emb)) == pytest.approx(expected, rel=1e-5)


def test_negatives_are_distinct_real_items_drawn_per_batch(built) -> None:
    model = built["model"]
    draws = [model.sample_negatives() for _ in range(50)]
    for draw in draws:
        assert len(draw) == 8 and len(set(draw.tolist())) == 8
        assert int(draw.min()) >= 1 and int(draw.max()) <= model.n_items - 1
    assert len({tuple(d.tolist()) for d in draws}) > 40
    assert set(torch.cat(draws).tolist()) == set(range(1, model.n_items))  # uniform over every real item


def test_pool_is_the_ranking_pool_placed_on_its_sequential_training_rows(built) -> None:
    """Each CoT row sits at the training row of the same user and item: its position is that row's
    rank among the user's rows, its history that row's input; the labels are the ctr labels."""
    model, train = built["model"], built["train"]
    inter = train._dataset.inter_feat
    users, items, histories = inter["user_id"], inter["item_id"], inter["item_id_list"]
    rank: dict[int, int] = {}
    positions = []
    for u in users.tolist():
        positions.append(rank.get(u, 0))
        rank[u] = positions[-1] + 1
    token = train._dataset.id2token
    rows = {(token("user_id", int(u)), token("item_id", int(i))): r for r, (u, i) in enumerate(zip(users, items))}
    assert len(model.pool_user) == 24  # the fixture has no ties in time: every CoT row is a training row
    for c in range(len(model.pool_user)):
        r = rows[(token("user_id", int(model.pool_user[c])), token("item_id", int(model.pool_item[c])))]
        assert int(model.pool_position[c]) == positions[r]
        assert torch.equal(model.pool_history[c], histories[r])
    # the labels and CoTs are the ranking task's (rating >= 3 on the tiny fixture)
    ratings = _ratings(built["root"])
    for c in range(len(model.pool_user)):
        key = (token("user_id", int(model.pool_user[c])), token("item_id", int(model.pool_item[c])))
        assert int(model.pool_label[c]) == int(ratings[key] >= 3)
    written = (built["root"] / DATASET / f"{DATASET}.cot_tiny_llama.jsonl").read_text().splitlines()
    assert len(written) == 24


def _first_batch(loader):
    """The first batch's interaction (RecBole's evaluation loaders yield tuples)."""
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, tuple) else batch


def _ratings(root: Path) -> dict:
    lines = (root / DATASET / f"{DATASET}.inter").read_text().splitlines()[1:]
    return {(u, i): float(r) for u, i, r, _ in (line.split("\t") for line in lines)}


def test_examples_by_history_alone_never_the_same_user_now_or_later(built) -> None:
    model, train = built["model"], built["train"]
    inter = train._dataset.inter_feat
    users, items, histories = inter["user_id"], inter["item_id"], inter["item_id_list"]
    query_pos = model.query_position(users, items)
    ex = model.examples(users, items, histories)

    def mean_text(h):
        real = [i for i in h.tolist() if i != 0]
        return sum(model.item_text[i] for i in real) / max(len(real), 1)

    pool_vectors = [mean_text(h) for h in model.pool_history]
    for row in range(0, len(users), 7):
        q = mean_text(histories[row])
        scored = sorted(((float(q @ pool_vectors[c]), c) for c in range(len(pool_vectors))
                         if not (model.pool_user[c] == users[row] and model.pool_position[c] >= query_pos[row])),
                        key=lambda t: -t[0])
        best = [c for _, c in scored if model.pool_label[c] == 1][:2] + [c for _, c in scored if model.pool_label[c] == 0][:2]
        allowed = {c for _, c in scored}
        assert set(ex[row].tolist()) <= allowed
        # users u and u + 30 of the fixture have equal histories: compare (label, score), not ids
        def picked(rows):
            return sorted((int(model.pool_label[c]), round(float(q @ pool_vectors[c]), 5)) for c in rows)
        assert picked(ex[row].tolist()) == picked(best)


def test_user_vector_is_sasrec_plus_a_tenth_of_w_with_every_token_by_hand(built) -> None:
    model = built["model"]
    batch = _first_batch(built["test"])
    user, items, target = batch["user_id"], batch["item_id_list"], batch["item_id"]
    seen = {}
    hook = model.ict.register_forward_hook(lambda m, args, out: seen.update(tokens=args[0], out=out))
    with torch.no_grad():
        vector = model(batch)
    hook.remove()

    def token(u, h, i):
        real = (h != 0).float().unsqueeze(-1)
        text = (model.item_text[h] * real).sum(1) / real.sum(1).clamp(min=1)
        parts = [model.user_emb.weight[u], _sasrec_by_hand(model, h), model.text_map(text), model.item_emb.weight[i],
                 model.text_map(model.item_text[i])]
        return torch.cat(parts, -1) @ model.feature_map.weight.T + model.feature_map.bias

    with torch.no_grad():
        ex = model.examples(user, target, items)
        tokens = []
        for k in range(4):
            c = ex[:, k]
            tokens += [token(model.pool_user[c], model.pool_history[c], model.pool_item[c]),
                       model.text_map(model.pool_cot[c]), model.label_emb.weight[model.pool_label[c]]]
        tokens.append(token(user, items, torch.zeros_like(target)))  # the target itself is never an input
        torch.testing.assert_close(seen["tokens"], torch.stack(tokens, 1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(vector, _sasrec_by_hand(model, items) + 0.1 * seen["out"][:, -1], rtol=1e-4, atol=1e-5)
        scores = model.full_sort_predict(batch)
        torch.testing.assert_close(scores, vector @ model.item_emb.weight.T, rtol=1e-4, atol=1e-5)


def test_training_rows_sit_at_their_rank_and_other_rows_after_them_all(built) -> None:
    model, train = built["model"], built["train"]
    inter = train._dataset.inter_feat
    users, items = inter["user_id"], inter["item_id"]
    rank: dict[int, int] = {}
    expected = []
    for u in users.tolist():
        expected.append(rank.get(u, 0))
        rank[u] = expected[-1] + 1
    torch.testing.assert_close(model.query_position(users, items), torch.tensor(expected))
    big = torch.iinfo(torch.long).max
    top = int(torch.argmax(users * model.n_items + items))  # the largest key keeps its own rank too
    assert model.query_position(users[top:top + 1], items[top:top + 1]).tolist() == [expected[top]]
    # (user 1, item 0): item 0 is padding, in no training row; a test target neither
    test = _first_batch(built["test"])
    assert model.query_position(torch.tensor([1]), torch.tensor([0])).tolist() == [big]
    assert set(model.query_position(test["user_id"], test["item_id"]).tolist()) == {big}


def test_predict_scores_the_given_item_with_the_user_vector(built) -> None:
    model = built["model"]
    batch = _first_batch(built["test"])
    with torch.no_grad():
        vector = model(batch)
        expected = (vector * model.item_emb.weight[batch["item_id"]]).sum(1)
        torch.testing.assert_close(model.predict(batch), expected)


def test_reconstruction_loss_from_its_formula(built) -> None:
    model = built["model"]
    torch.manual_seed(2)
    hidden, cots = torch.randn(3, 13, 64), torch.randn(3, 4, 384)
    total = 0.0
    for b in range(3):
        for k, position in enumerate([0, 3, 6, 9]):  # each example's feature token
            r = model.reconstruct(hidden[b, position]).detach()
            total += float(r @ cots[b, k] / (r.norm() * cots[b, k].norm()))
    with torch.no_grad():
        assert float(model.reconstruction_loss(hidden, cots)) == pytest.approx(1 - total / 12, rel=1e-5)


def test_reconstruction_counts_only_when_weighted(built) -> None:
    model = built["model"]
    batch = next(iter(built["train"]))
    torch.manual_seed(1)
    plain = model.calculate_loss(batch)
    torch.manual_seed(1)
    user, hidden, cots = model._user_and_hidden(batch)
    negatives = model.sample_negatives()
    target = batch["item_id"]
    expected = sampled_softmax_loss(user, model.item_emb(target), target, negatives, model.item_emb(negatives))
    torch.testing.assert_close(plain, expected)
    for weight in (0.5, 1.0):
        model.reconstruction_weight = weight
        try:
            torch.manual_seed(1)
            weighted = model.calculate_loss(batch)
        finally:
            model.reconstruction_weight = 0.0
        torch.testing.assert_close(weighted, expected + weight * model.reconstruction_loss(hidden, cots))


def test_initialisation_as_each_official_model(built, tmp_path: Path) -> None:
    """The plain SASRec keeps PyTorch's defaults (embeddings N(0, 1)); LLM-CF(SASRec) runs xavier over
    its linears and embeddings, then makes its label table N(0, 1); convolutions keep theirs."""
    root = built["root"]
    model_class, config, _, (train, _, _) = split_for("LLMCFSASRec", DATASET, root, {"num_negatives": 8})
    plain = model_class(config, train._dataset)
    assert float(plain.item_emb.weight[1:].detach().std()) == pytest.approx(1.0, rel=0.15)
    model = built["model"]
    n, d = model.n_items, 64
    torch.manual_seed(0)
    assert float(model.item_emb.weight.detach().std()) == pytest.approx(math.sqrt(2 / (n + d)), rel=0.15)
    assert float(model.item_emb.weight.detach()[0].abs().sum()) > 0  # the padding row too, as xavier over the table
    assert float(model.feature_map.bias.detach().abs().max()) == 0.0
    assert float(model.label_emb.weight.detach().std()) > 0.3  # N(0, 1), not xavier's ~0.17
    conv = model.encoder.forwards[0].conv1.weight.detach()
    assert float(conv.abs().max()) <= 1 / math.sqrt(d) + 1e-6  # Conv1d's default bound, untouched
    model_class, config, _, (train, _, _) = split_for("LLMCFSASRec", DATASET, root, {"num_negatives": 8,
                                                                                    "weight_init": "xavier"})
    xavier = model_class(config, train._dataset)
    assert float(xavier.item_emb.weight.detach().std()) == pytest.approx(math.sqrt(2 / (n + d)), rel=0.15)
    model_class, config, _, (train, _, _) = split_for("LLMCFSASRec", DATASET, root, {"num_negatives": 8,
                                                                                    "weight_init": "kaiming"})
    with pytest.raises(UserError, match="weight_init='kaiming': expected official or xavier"):
        model_class(config, train._dataset)
    assert LLMCFSASRec.run_label({"MAX_ITEM_LIST_LENGTH": 20, "weight_init": "official"}) == "SASRec(LLM-CF code)"
    assert LLMCFSASRec.run_label({"MAX_ITEM_LIST_LENGTH": 50, "weight_init": "xavier"}) == \
        "SASRec(LLM-CF code, history 50, xavier init)"
    assert LLMCFRetrieval.run_label({"MAX_ITEM_LIST_LENGTH": 20, "cot_decoding": "greedy", "cot_rows": 600,
                                     "cot_reconstruction_weight": 0.0}) == "LLM-CF(SASRec, greedy CoT, CoT on 600 rows)"
    assert LLMCFRetrieval.run_label({"MAX_ITEM_LIST_LENGTH": 20, "cot_reconstruction_weight": 1.0}) == \
        "LLM-CF(SASRec, reconstruction 1.0)"


def test_too_many_negatives_and_a_dataset_without_ranking_labels_are_one_clear_error(built, tmp_path: Path) -> None:
    root = built["root"]
    model_class, config, _, (train, _, _) = split_for("LLMCFSASRec", DATASET, root, {})
    with pytest.raises(UserError, match=r"num_negatives 128 needs more items than tiny-ctr has \(30\)"):
        model_class(config, train._dataset)
    config["num_negatives"] = 31  # one more than the 30 items: refused, not silently 30
    with pytest.raises(UserError, match="num_negatives 31 needs more items"):
        model_class(config, train._dataset)
    config["num_negatives"] = 30
    assert len(model_class(config, train._dataset).sample_negatives()) == 30
    other = tmp_path / "data"
    folder = write_ctr_fixture(other)
    yaml = (folder / f"{DATASET}.yaml").read_text()
    (folder / f"{DATASET}.yaml").write_text(yaml.replace("  ctr:\n", "  unused_ctr:\n"))
    model_class, config, _, (train, _, _) = split_for("LLMCFRetrieval", DATASET, other,
                                                      {**SMALL, "cot_generator": str(built["lm"])})
    with pytest.raises(UserError, match="takes its in-context examples from the ranking task's labelled rows, and .* "
                                        "defines no 'ctr' protocol"):
        model_class(config, train._dataset)
    assert not list(folder.glob("*.cot_*"))


def test_both_run_under_the_sequential_protocol_and_share_the_ranking_cots(built, tmp_path: Path) -> None:
    from recbole_llm.runner import run

    root = built["root"]
    before = (root / DATASET / f"{DATASET}.cot_tiny_llama.jsonl").read_text()
    records = {}
    for model in ("LLMCFSASRec", "LLMCFRetrieval", "LLMCF"):
        overrides = {**SMALL, "cot_generator": str(built["lm"])} if model != "LLMCFSASRec" else {"num_negatives": 8}
        if model == "LLMCF":
            overrides.pop("num_negatives")
        records[model] = run(model, DATASET, overrides=overrides, epochs=1, output=None,
                             run_dir=tmp_path / model, verbose=False, data_path=root)
    for model in ("LLMCFSASRec", "LLMCFRetrieval"):
        assert records[model]["protocol"] == "sequential"
        assert {"hit@5", "hit@10", "ndcg@5", "ndcg@10"} <= set(records[model]["test"])
    assert records["LLMCFSASRec"]["label"] == "SASRec(LLM-CF code, history 5)"
    assert records["LLMCFRetrieval"]["label"] == \
        "LLM-CF(SASRec, greedy CoT, CoT 6 tokens, CoT on 24 rows, tiny-llama CoT, history 5)"
    # the ranking model of the same settings found every CoT written: nothing was added
    assert (root / DATASET / f"{DATASET}.cot_tiny_llama.jsonl").read_text() == before


def test_every_real_user_and_item_learns_and_padding_does_not(built) -> None:
    """Padding (id 0) is the only row without a gradient: the first training rows (user 1's) reach
    user 1's embedding through the row's own token."""
    model = built["model"]
    batch = built["train"]._dataset.inter_feat[:8]
    model.zero_grad()
    model.calculate_loss(batch).backward()
    try:
        users = set(batch["user_id"].tolist()) | set(model.pool_user[model.examples(
            batch["user_id"], batch["item_id"], batch["item_id_list"]).reshape(-1)].tolist())
        assert 1 in users
        for u in users:
            assert float(model.user_emb.weight.grad[u].abs().sum()) > 0
        assert float(model.user_emb.weight.grad[0].abs().sum()) == 0
        assert float(model.item_emb.weight.grad[0].abs().sum()) == 0
    finally:
        model.zero_grad()


def test_cot_rows_off_the_training_rows_are_left_out_and_too_few_refused(built, monkeypatch) -> None:
    """A CoT row whose (user, item) is no sequential training row (here: moved onto a user's test
    target, or onto an item the sequential data does not have) is left out; the rest keep their
    places; fewer than 4 usable rows is one clear error."""
    from recbole_llm.model import llmcf_retrieval

    config, dataset = built["config"], built["train"]._dataset
    pool, ctr = llmcf_retrieval.ranking_pool(config)
    test = _first_batch(built["test"])
    to_ctr = ctr.field2token_id
    seq_token = dataset.id2token
    moved = dict(pool)
    moved["user"], moved["item"] = pool["user"].clone(), pool["item"].clone()
    moved["user"][0] = to_ctr["user_id"][seq_token("user_id", int(test["user_id"][0]))]
    moved["item"][0] = to_ctr["item_id"][seq_token("item_id", int(test["item_id"][0]))]
    monkeypatch.setattr(llmcf_retrieval, "ranking_pool", lambda config: (moved, ctr))
    placed = llmcf_retrieval.sequential_pool(config, dataset)
    assert len(placed["user"]) == 23 and torch.equal(placed["label"], pool["label"][1:])
    assert torch.equal(placed["cot"], pool["cot"][1:])
    # an item token the sequential dataset lacks maps to no row either
    lookup = dict(dataset.field2token_id["item_id"])
    monkeypatch.setitem(dataset.field2token_id, "item_id", {k: v for k, v in lookup.items()
                                                            if k != seq_token("item_id", int(pool["item"][1]))})
    assert len(llmcf_retrieval.sequential_pool(config, dataset)["user"]) < 23
    monkeypatch.setitem(dataset.field2token_id, "item_id", lookup)
    # exactly 4 usable rows is enough, 3 is not
    for usable, ok in ((4, True), (3, False)):
        few = dict(pool)
        few["user"] = pool["user"].clone()
        few["user"][usable:] = 0  # padding user: no training row
        monkeypatch.setattr(llmcf_retrieval, "ranking_pool", lambda config, few=few: (few, ctr))
        if ok:
            assert len(llmcf_retrieval.sequential_pool(config, dataset)["user"]) == usable
        else:
            with pytest.raises(UserError, match=r"only 3 CoT rows are sequential training rows of tiny-ctr; expected at least 4"):
                llmcf_retrieval.sequential_pool(config, dataset)
