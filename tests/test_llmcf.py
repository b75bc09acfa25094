"""LLM-CF(DeepFM): the in-context retrieval against a brute-force search (no same-user row at the
same or a later position, 2 + 2 labels), the decoder against a hand-written LLaMA block, the logit
and the reconstruction loss from their formulas, the CoT pipeline (prompt, rows, score, resume), and
runs under the ctr protocol on the tiny fixture with a tiny Llama writing the CoTs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.errors import UserError
from recbole_llm.llm import cot
from recbole_llm.model.llmcf import (LLMCF, InContextTransformer, example_order, first_positions, fm_interaction,
                                    masked_mean, retrieve_examples, row_positions)
from tests.conftest import split_for, write_ctr_fixture

DATASET = "tiny-ctr"


def _brute_force(qh, qi, qu, qp, ch, ci, cu, cp, cl, per_label=2):
    """The official rule, one query at a time, in plain Python."""
    out = []
    for b in range(len(qh)):
        scored = []
        for c in range(len(ch)):
            if cu[c] == qu[b] and cp[c] >= qp[b]:
                continue
            s = 0.5 * sum(x * y for x, y in zip(qh[b], ch[c])) + 0.5 * sum(x * y for x, y in zip(qi[b], ci[c]))
            scored.append((s, c))
        scored.sort(key=lambda t: -t[0])
        picks = [c for s, c in scored if cl[c] == 1][:per_label] + [c for s, c in scored if cl[c] == 0][:per_label]
        if len(picks) < 2 * per_label:
            picks = [c for s, c in scored][:2 * per_label]
        out.append(picks)
    return out


def test_examples_are_the_best_two_of_each_label_never_the_same_user_now_or_later() -> None:
    g = torch.Generator().manual_seed(3)
    pool, queries, d = 40, 12, 6
    ch, ci = torch.randn(pool, d, generator=g), torch.randn(pool, d, generator=g)
    cu, cp = torch.randint(0, 4, (pool,), generator=g), torch.randint(0, 10, (pool,), generator=g)
    cl = torch.randint(0, 2, (pool,), generator=g)
    qh, qi = torch.randn(queries, d, generator=g), torch.randn(queries, d, generator=g)
    qu, qp = torch.randint(0, 4, (queries,), generator=g), torch.randint(0, 10, (queries,), generator=g)
    found = retrieve_examples(qh, qi, qu, qp, ch, ci, cu, cp, cl)
    expected = _brute_force(qh.tolist(), qi.tolist(), qu.tolist(), qp.tolist(), ch.tolist(), ci.tolist(),
                            cu.tolist(), cp.tolist(), cl.tolist())
    assert found.tolist() == expected
    for b in range(queries):
        for c in found[b].tolist():
            assert not (cu[c] == qu[b] and cp[c] >= qp[b])


def test_a_row_never_retrieves_itself_and_earlier_rows_of_its_user_stay_available() -> None:
    # The pool: user 0 at positions 0 (label 1), 1 (label 0), 2 (label 1); user 1's rows.
    cu = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    cp = torch.tensor([0, 1, 2, 0, 1, 2, 3])
    cl = torch.tensor([1, 0, 1, 1, 0, 1, 0])
    ci = torch.eye(7)
    ch = torch.zeros(7, 7)
    # Query = the pool's row 1 (user 0, position 1): its own item would score highest.
    found = retrieve_examples(torch.zeros(1, 7), ci[1:2], torch.tensor([0]), torch.tensor([1]), ch, ci, cu, cp, cl)
    assert 1 not in found[0].tolist() and 2 not in found[0].tolist()
    # A validation row of user 0 (after every training row): all of user 0's rows may be chosen.
    item = ci[0:1] + ci[1:2] + 0.5 * ci[2:3]
    found = retrieve_examples(torch.zeros(1, 7), item, torch.tensor([0]), torch.tensor([10 ** 9]), ch, ci, cu, cp, cl)
    assert sorted(found[0].tolist()[:2]) == [0, 2] and found[0].tolist()[2] == 1


def test_a_label_short_of_rows_is_filled_from_the_other_and_an_empty_pool_refused() -> None:
    cu, cp = torch.tensor([1, 1, 1, 1, 1]), torch.arange(5)
    cl = torch.tensor([1, 1, 1, 1, 0])
    vec = torch.arange(5.0)[:, None]
    found = retrieve_examples(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0]), torch.tensor([0]),
                              vec, vec, cu, cp, cl)
    assert found[0].tolist() == [4, 3, 2, 1]  # best first, whatever the label
    with pytest.raises(UserError, match="fewer than 4 usable rows"):
        retrieve_examples(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([1]), torch.tensor([2]),
                          vec, vec, cu, cp, cl)


def test_fm_term_is_the_sum_of_pairwise_inner_products() -> None:
    fields = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    pairwise = sum((fields[:, i] * fields[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(fm_interaction(fields), pairwise)


def test_masked_mean_ignores_padding_and_flattens_lists() -> None:
    table = torch.arange(12.0).view(6, 2)
    ids = torch.tensor([[[1, 0], [3, 5]], [[0, 0], [0, 0]]])
    out = masked_mean(table, ids)
    torch.testing.assert_close(out[0], (table[1] + table[3] + table[5]) / 3)
    torch.testing.assert_close(out[1], torch.zeros(2))


def _rms(x, w, eps=1e-5):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rotate(x, positions, theta=10000.0):
    """RoPE in the rotate-half layout: the i-th and (i + d/2)-th coordinates turn by pos / theta^(2i/d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions[:, None].float() * inv[None]
    cos, sin = torch.cos(angles), torch.sin(angles)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def test_in_context_decoder_is_a_causal_llama_stack_with_rmsnorm_rope_and_swiglu() -> None:
    torch.manual_seed(0)
    ict = InContextTransformer(dim=8, heads=2, layers=2, ffn=16, max_tokens=13).eval()
    tokens = torch.randn(2, 5, 8)
    p = {k: v.detach() for k, v in ict.state_dict().items()}
    h = tokens.clone()
    positions = torch.arange(5)
    for layer in range(2):
        pre = f"decoder.layers.{layer}."
        x = _rms(h, p[pre + "input_layernorm.weight"])
        q, k, v = (x @ p[pre + f"self_attn.{n}_proj.weight"].T for n in "qkv")
        q, k, v = (t.view(2, 5, 2, 4).transpose(1, 2) for t in (q, k, v))
        q, k = _rotate(q, positions), _rotate(k, positions)
        scores = q @ k.transpose(-1, -2) / math.sqrt(4)
        scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)
        h = h + attended @ p[pre + "self_attn.o_proj.weight"].T
        x = _rms(h, p[pre + "post_attention_layernorm.weight"])
        gate, up = x @ p[pre + "mlp.gate_proj.weight"].T, x @ p[pre + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ p[pre + "mlp.down_proj.weight"].T
    expected = _rms(h, p["decoder.norm.weight"])
    with torch.no_grad():
        torch.testing.assert_close(ict(tokens), expected, rtol=1e-4, atol=1e-5)
    # no biases, no token table, and PyTorch's default (uniform) initialisation of the projections
    assert not any("bias" in k or "embed" in k for k in p)
    bound = 1 / math.sqrt(8)
    q_proj = p["decoder.layers.0.self_attn.q_proj.weight"]
    assert float(q_proj.abs().max()) <= bound and float(q_proj.std()) > 0.5 * bound / math.sqrt(3)


def test_cot_prompt_states_the_true_decision_and_the_items_in_order() -> None:
    positive = cot.cot_prompt("Title: B.", ["Title: A1.", "Title: A2."], 1)
    negative = cot.cot_prompt("Title: B.", [], 0)
    assert "The user's earlier items: [Title: A1.][Title: A2.]." in positive  # oldest first, as listed
    assert cot.decision_text(1) in positive and cot.decision_text(0) in negative
    assert cot.decision_text(1) != cot.decision_text(0) and "The user's earlier items: [none]. " in negative
    # the decision as the prompt states it (the CoT is written to explain it)
    assert "Decision: the user chose the target item and rated it highly." in positive
    assert "Decision: the user did not rate the target item highly." in negative


def test_cot_fingerprint_changes_with_every_setting_that_changes_the_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    greedy, beams = cot.CotSettings(decoding="greedy"), cot.CotSettings(decoding="beam_sample")
    prints = {greedy.fingerprint("h"), beams.fingerprint("h"), greedy.fingerprint("other prompts"),
              cot.CotSettings(generator="other", decoding="greedy").fingerprint("h"),
              cot.CotSettings(decoding="greedy", max_new_tokens=128).fingerprint("h")}
    assert len(prints) == 5 and all(len(f) == 16 for f in prints)
    assert greedy.fingerprint("h") == cot.CotSettings(decoding="greedy", batch_size=3).fingerprint("h")  # speed only
    before_greedy, before_beams = greedy.fingerprint("h"), beams.fingerprint("h")
    monkeypatch.setattr(cot, "BEAM_SAMPLING", {**cot.BEAM_SAMPLING, "temperature": 0.9})
    # the sampling settings and the scorer are part of beam sampling's texts, not of greedy decoding's
    assert beams.fingerprint("h") != before_beams and greedy.fingerprint("h") == before_greedy


def test_cot_rows_are_a_seeded_share_or_count_of_the_training_rows() -> None:
    rows = cot.sample_rows(1000, 0.1)
    assert len(rows) == 100 and len(set(rows.tolist())) == 100 and list(rows) == sorted(rows)
    assert rows.tolist() == cot.sample_rows(1000, 0.1).tolist()
    assert rows.tolist() != cot.sample_rows(1000, 0.1, seed=1).tolist()
    assert len(cot.sample_rows(1000, 37)) == 37
    assert cot.sample_rows(10, 1.0).tolist() == list(range(10))  # a share of 1: every row
    assert cot.sample_rows(10, 10).tolist() == list(range(10)) and len(cot.sample_rows(10, 4)) == 4
    for bad in (0.001, 3, 2000):
        with pytest.raises(UserError, match="cot_rows"):
            cot.sample_rows(1000, bad)
    with pytest.raises(UserError, match="cot_rows=11: gives 11 of 10 training rows"):
        cot.sample_rows(10, 11)


def test_the_four_part_score_and_its_coherence_from_their_definitions() -> None:
    assert cot.repetition_coherence("a b a c a") == pytest.approx(1 - 2 / 5)
    assert cot.repetition_coherence("") == 0.0
    e = np.eye(4, dtype=np.float32)
    guidelines = np.stack([e[0], e[1]])
    vec = (e[0] + e[2]) / math.sqrt(2)
    text = "one two three four"  # no repeated word: coherence 1
    decision = (e[0] + e[3]) / math.sqrt(2)
    expected = 0.25 * (1.0 + np.mean([1 / math.sqrt(2), 0.0]) + 1 / math.sqrt(2) + 0.5)
    assert cot.cot_score(vec, text, guidelines, e[2], decision) == pytest.approx(expected)
    assert cot.cot_score(vec, "123456789", guidelines, e[2], decision) == 0.0  # under 10 characters
    ten = "0123456789"  # one word: coherence 1
    assert cot.cot_score(vec, ten, guidelines, e[2], decision) == pytest.approx(expected)


class _Writer:
    """Stands in for the LM: numbered answers, an interruption after ``stop_after`` prompts."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[dict] = []
        self.prompts: list[str] = []
        self.stop_after = stop_after

    def generate(self, system, inputs, max_new_tokens, **options):
        if self.stop_after is not None and len(self.prompts) >= self.stop_after:
            raise KeyboardInterrupt
        assert system == cot.COT_SYSTEM_PROMPT
        self.calls.append(options)
        self.prompts.extend(inputs)
        n = options.get("num_return_sequences", 1)
        return [f"answer {i} of {text}" for text in inputs for i in range(n)]


def test_cots_resume_and_beam_sampling_keeps_the_scorers_pick(tmp_path: Path) -> None:
    path = tmp_path / "cots.jsonl"
    prompts = {f"k{i}": f"prompt {i}" for i in range(5)}
    greedy = cot.CotSettings(decoding="greedy", batch_size=2)
    writer = _Writer(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        cot.write_cots(path, prompts, greedy, "fp", lambda: writer, None, progress=False)
    writer.stop_after = None
    out = cot.write_cots(path, prompts, greedy, "fp", lambda: writer, lambda p, a: 1 / 0, progress=False)
    assert writer.prompts == [f"prompt {i}" for i in range(5)]  # nothing written twice
    assert out == {k: f"answer 0 of {p}" for k, p in prompts.items()} and writer.calls[0] == {}  # no scorer asked
    assert all("alternatives" not in json.loads(line) for line in path.read_text().splitlines())
    beams = cot.CotSettings(decoding="beam_sample", batch_size=5)

    def third(prompt: str, answers: list[str]) -> int:
        assert answers == [f"answer {i} of {prompt}" for i in range(3)]  # the prompt's own three answers
        return 2

    picked = cot.write_cots(tmp_path / "b.jsonl", prompts, beams, "fp2", lambda: writer, third, progress=False)
    assert picked == {k: f"answer 2 of {p}" for k, p in prompts.items()}
    assert writer.calls[-1] == {"sampling": cot.BEAM_SAMPLING, "num_return_sequences": 3, "sample_seed": 0}
    line = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    assert line["alternatives"] == ["answer 0 of prompt 0", "answer 1 of prompt 0"]
    assert cot.read_cots(path, "other fingerprint") == {}


def test_cot_vectors_are_unit_length_and_cached_until_the_texts_or_encoder_change(tmp_path: Path) -> None:
    calls: list[tuple[list[str], bool]] = []

    class Encoder:
        def encode(self, texts: list[str], progress: bool) -> np.ndarray:
            calls.append((texts, progress))
            return np.array([[3.0, 4.0], [0.0, -0.5]][:len(texts)])  # one row longer than 1, one shorter

    path, keys = tmp_path / "v.npz", ["a", "b"]
    texts = {"a": "first", "b": "second", "unused": "x"}
    vectors = cot.encode_cots(path, keys, texts, "minilm", Encoder, progress=False)
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)  # (3, 4) / 5, (0, -0.5) / 0.5
    assert calls == [(["first", "second"], False)]
    again = cot.encode_cots(path, keys, texts, "minilm", lambda: 1 / 0, progress=False)  # cached: no encoder
    np.testing.assert_array_equal(again, vectors)
    cot.encode_cots(path, keys, {**texts, "b": "changed"}, "minilm", Encoder, progress=True)
    cot.encode_cots(path, keys, {**texts, "b": "changed"}, "other-encoder", Encoder, progress=False)
    assert [c[0] for c in calls[1:]] == [["first", "changed"]] * 2 and calls[1][1] is True
    assert not list(tmp_path.glob("*.tmp*"))  # the cache is written whole, then moved into place


def test_cot_time_estimate_scales_greedy_with_its_tokens_and_not_beam_sampling() -> None:
    # measured rates (benchmarks/llmcf_cot_speed.py): greedy 5.6 s, beam sampling 16.1 s per 256-token CoT
    assert cot.expected_seconds(10, cot.CotSettings(decoding="greedy", max_new_tokens=128)) == pytest.approx(28.0)
    assert cot.expected_seconds(3, cot.CotSettings(decoding="greedy", max_new_tokens=512)) == pytest.approx(33.6)
    assert cot.expected_seconds(10, cot.CotSettings(decoding="beam_sample", max_new_tokens=128)) == pytest.approx(161.0)
    assert cot.expected_seconds(2, cot.CotSettings(decoding="something new")) == pytest.approx(32.2)


def test_each_cot_line_carries_its_share_of_the_batch_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    clock = iter([100.0, 106.0, 200.0, 203.0, 300.0, 302.5])  # batch starts and ends: 6 s, 3 s, 2.5 s
    monkeypatch.setattr(cot.time, "perf_counter", lambda: next(clock))
    path = tmp_path / "cots.jsonl"
    path.write_text(json.dumps({"key": "old", "cot": "written before timing", "fingerprint": "fp"}) + "\n")
    prompts = {"old": "prompt old", **{f"k{i}": f"prompt {i}" for i in range(5)}}
    with caplog.at_level("INFO", logger="recbole_llm"):
        cot.write_cots(path, prompts, cot.CotSettings(decoding="greedy", batch_size=2), "fp", lambda: _Writer(), None,
                       progress=False)
    assert f"wrote 5 chains of thought to {path}; the pool's 5 timed rows took 12 s (0.2 min) to write" in caplog.messages
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line.get("seconds") for line in lines] == [None, 3.0, 3.0, 1.5, 1.5, 2.5]  # batch time / its rows
    assert cot.pool_seconds(path, "fp") == (5, 11.5)  # the untimed old line is left out, not counted as 0
    with path.open("a") as f:  # a stray value and a line cut short, then a whole line
        f.write('7\n{"key": "cut", "cot": "an interrupted wri\n' + json.dumps({"key": "new", "cot": "c", "fingerprint": "fp",
                                                                                "seconds": 0.25}) + "\n")
    assert cot.pool_seconds(path, "fp") == (6, 11.75) and set(cot.read_cots(path, "fp")) == {*prompts, "new"}
    assert cot.pool_seconds(path, "other") == (0, 0.0) and cot.pool_seconds(tmp_path / "none.jsonl", "fp") == (0, 0.0)


def test_labels_name_every_departure() -> None:
    assert LLMCF.run_label({}) == "LLM-CF(DeepFM)"
    assert LLMCF.run_label({"cot_generator": "smollm2", "llm_encoder": "minilm", "cot_rows": 0.1,
                            "cot_decoding": "beam_sample", "cot_max_new_tokens": 256,
                            "cot_reconstruction_weight": 1.0}) == "LLM-CF(DeepFM)"
    assert LLMCF.run_label({"cot_generator": "/m/Llama-2-7b/", "llm_encoder": "/m/bge-base/"}) == \
        "LLM-CF(DeepFM, Llama-2-7b CoT, bge-base vectors)"
    assert LLMCF.run_label({"cot_rows": 1}) == "LLM-CF(DeepFM, CoT on every row)"
    assert LLMCF.run_label({"cot_rows": 2}) == "LLM-CF(DeepFM, CoT on 2 rows)"
    assert LLMCF.run_label({"cot_decoding": "greedy", "cot_max_new_tokens": 128, "cot_rows": 600}) == \
        "LLM-CF(DeepFM, greedy CoT, CoT 128 tokens, CoT on 600 rows)"
    assert LLMCF.run_label({"cot_rows": 0.05, "cot_reconstruction_weight": 0.0}) == \
        "LLM-CF(DeepFM, CoT on 0.05 of rows, reconstruction 0.0)"


SMALL = {"cot_rows": 24, "cot_decoding": "greedy", "cot_max_new_tokens": 6, "train_batch_size": 16}


@pytest.fixture(scope="module")
def built(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory, session_home: Path):
    root = tmp_path_factory.mktemp("llmcf") / "data"
    write_ctr_fixture(root)
    model_class, config, _, (train, _, test) = split_for("LLMCF", DATASET, root, {**SMALL, "cot_generator": str(tiny_lm)})
    return {"model": model_class(config, train._dataset).eval(), "train": train, "test": test, "config": config,
            "root": root}


def test_pool_positions_and_examples_of_every_training_row_follow_the_rule(built) -> None:
    model, train = built["model"], built["train"]
    inter = train._dataset.inter_feat
    users, items = inter["user_id"], inter["item_id"]
    rank: dict[int, int] = {}
    positions = []
    for u in users.tolist():  # rows are in (user, time) order: the k-th row of a user is at position k
        positions.append(rank.get(u, 0))
        rank[u] = positions[-1] + 1
    torch.testing.assert_close(model.query_position(users, items), torch.tensor(positions))
    assert len(model.pool_user) == 24 and torch.equal(model.pool_position, torch.tensor(positions)[_pool_rows(model, inter)])
    ex = model.examples(users, items, inter["item_id_list"])
    for row in range(len(users)):
        for c in ex[row].tolist():
            assert not (model.pool_user[c] == users[row] and model.pool_position[c] >= positions[row])
        assert sorted(model.pool_label[ex[row]].tolist()) == [0, 0, 1, 1]


def _pool_rows(model, inter) -> list[int]:
    keys = (inter["user_id"] * model.n_items + inter["item_id"]).tolist()
    return [keys.index(k) for k in (model.pool_user * model.n_items + model.pool_item).tolist()]


def test_unseen_rows_come_after_every_training_row(built) -> None:
    model = built["model"]
    big = torch.iinfo(torch.long).max
    # (user 1, item 0): item 0 is padding, so this pair is in no training row
    assert model.query_position(torch.tensor([1]), torch.tensor([0])).tolist() == [big]


def test_logit_tokens_and_reconstruction_from_their_formulas(built) -> None:
    model = built["model"]
    batch = next(iter(built["test"]))[0] if isinstance(next(iter(built["test"])), tuple) else next(iter(built["test"]))
    user, item, history = batch["user_id"], batch["item_id"], batch["item_id_list"]
    seen = {}
    hook = model.ict.register_forward_hook(lambda m, args, out: seen.update(tokens=args[0], out=out))
    with torch.no_grad():
        logit = model(batch)
    hook.remove()
    d = 32
    ex = model.examples(user, item, history)
    # every field by hand: embeddings looked up and mean-pooled here, not by the model's helpers
    def pooled(table, ids):
        ids = ids.reshape(len(ids), -1)
        rows = table.weight[ids] if hasattr(table, "weight") else table[ids]
        real = (ids != 0).float().unsqueeze(-1)
        return (rows * real).sum(1) / real.sum(1).clamp(min=1)

    def fields(u, i, h):
        out = [model.user_emb.weight[u], model.item_emb.weight[i]]
        out += [pooled(model.field_emb[f], getattr(model, f"feat_{f}")[i]) for f in model.item_fields]
        out.append(pooled(model.item_emb, h))
        out += [pooled(model.field_emb[f], getattr(model, f"feat_{f}")[h]) for f in model.item_fields]
        return out

    def feature_token(u, i, h):
        f, n = fields(u, i, h), len(model.item_fields)
        parts = f[:2] + [model.text_mlp(model.item_text[i])] + f[2:2 + n] + [f[2 + n], model.text_mlp(pooled(model.item_text, h))] + f[3 + n:]
        return model.feature_mlp(torch.cat(parts, -1))

    with torch.no_grad():
        tokens = []
        for k in range(4):
            c = ex[:, k]
            tokens += [feature_token(model.pool_user[c], model.pool_item[c], model.pool_history[c]),
                       model.text_mlp(model.pool_cot[c]), model.label_emb.weight[model.pool_label[c]]]
        tokens.append(feature_token(user, item, history))
        torch.testing.assert_close(seen["tokens"], torch.stack(tokens, 1))
        w = seen["out"][:, -1]
        f = fields(user, item, history)
        fm = sum((f[a] * f[b]).sum(-1) for a in range(len(f)) for b in range(a + 1, len(f)))
        first = model.bias + model.user_w.weight[user, 0] + model.item_w.weight[item, 0]
        for name in model.item_fields:
            first = first + pooled(model.field_w[name], getattr(model, f"feat_{name}")[item])[:, 0]
        x = torch.cat([*f, w], -1)
        for layer in model.dnn.mlp_layers:
            if isinstance(layer, torch.nn.Linear):
                x = torch.relu(layer(x))
        expected = first + (w @ model.w_first_order.weight.T)[:, 0] + fm + model.dnn_out(x)[:, 0]
        torch.testing.assert_close(logit, expected, rtol=1e-4, atol=1e-4)
        assert seen["tokens"].shape == (len(user), 13, d)
        hidden, cots = seen["out"], model.pool_cot[ex]
        recon = model.reconstruct(hidden[:, [0, 3, 6, 9]])
        cos = (recon * cots).sum(-1) / (recon.norm(dim=-1) * cots.norm(dim=-1))
        torch.testing.assert_close(model.reconstruction_loss(hidden, cots), 1 - cos.mean())


def test_loss_is_bce_plus_the_weighted_reconstruction(built) -> None:
    model = built["model"]
    batch = next(iter(built["train"]))
    torch.manual_seed(0)
    with torch.no_grad():
        model.eval()  # no dropout: the same numbers twice
        logit, hidden, cots = model._logit_and_hidden(batch)
        y = batch["label"].float()
        # -[y log s(x) + (1 - y) log(1 - s(x))] = log(1 + e^x) - y x, written so large logits stay finite
        bce = (torch.nn.functional.softplus(logit) - y * logit).mean()
        loss = model.calculate_loss(batch)
    torch.testing.assert_close(loss, bce + 1.0 * model.reconstruction_loss(hidden, cots), rtol=1e-4, atol=1e-5)


def test_missing_cots_without_generation_is_one_clear_error(built, tiny_lm: Path) -> None:
    from recbole_llm.model.llmcf import build_pool

    config = built["config"]
    config["llm_generate"], config["cot_seed"] = False, 99  # other rows: none written yet
    try:
        with pytest.raises(UserError, match=r"\d+ of 24 chains of thought for tiny-ctr .* are missing from .*tiny-ctr\.cot_tiny_llama\.jsonl"):
            build_pool(config, built["train"]._dataset)
    finally:
        config["llm_generate"], config["cot_seed"] = True, 0


def test_llmcf_and_its_backbone_run_under_the_ctr_protocol(built, tiny_lm: Path, tmp_path: Path) -> None:
    """Through `run`: the records, the labels, and the CoTs written beside the dataset are reused."""
    from recbole_llm.runner import run

    root = built["root"]
    records = {}
    for model in ("LLMCFDeepFM", "LLMCF"):
        overrides = {**SMALL, "cot_generator": str(tiny_lm)} if model == "LLMCF" else {"train_batch_size": 16}
        records[model] = run(model, DATASET, overrides=overrides, epochs=1, output=None,
                             run_dir=tmp_path / model, verbose=False, data_path=root)
    for record in records.values():
        assert record["protocol"] == "ctr" and set(record["test"]) == {"auc", "logloss", "gauc"}
    assert records["LLMCFDeepFM"]["label"] == "DeepFM(LLM-CF code)"
    assert records["LLMCF"]["label"] == "LLM-CF(DeepFM, greedy CoT, CoT 6 tokens, CoT on 24 rows, tiny-llama CoT)"
    written = (root / DATASET / f"{DATASET}.cot_tiny_llama.jsonl").read_text().splitlines()
    assert len({json.loads(line)["key"] for line in written}) == len(written)  # nothing written twice


def test_mismatched_widths_are_refused_before_any_cot_is_written(tmp_path: Path, session_home: Path) -> None:
    root = tmp_path / "data"
    write_ctr_fixture(root)
    model_class, config, _, (train, _, _) = split_for("LLMCF", DATASET, root,
                                                     {**SMALL, "in_context_dim": 16, "llm_generate": False})
    with pytest.raises(UserError, match="embedding_size 32 and in_context_dim 16 differ"):
        model_class(config, train._dataset)
    assert not list((root / DATASET).glob("*.cot_*"))


def test_weight_init_official_is_pytorchs_default_and_xavier_a_labelled_variant(tmp_path: Path, session_home: Path) -> None:
    root = tmp_path / "data"
    write_ctr_fixture(root)
    stds = {}
    for init in ("official", "xavier"):
        model_class, config, _, (train, _, _) = split_for("LLMCFDeepFM", DATASET, root, {"weight_init": init})
        model = model_class(config, train._dataset)
        stds[init] = float(model.user_emb.weight[1:].detach().std())
        stds[init + " bias"] = float(model.dnn_out.bias.detach().abs().max())
    n, d = 41, 32
    assert stds["official"] == pytest.approx(1.0, rel=0.1)  # nn.Embedding's N(0, 1)
    assert stds["xavier"] == pytest.approx(math.sqrt(2 / (n + d)), rel=0.15)
    assert stds["xavier bias"] == 0.0 and stds["official bias"] > 0
    assert LLMCF.run_label({"weight_init": "xavier"}) == "LLM-CF(DeepFM, xavier init)"
    from recbole_llm.model.llmcf import LLMCFDeepFM

    assert LLMCFDeepFM.run_label({"weight_init": "official"}) == "DeepFM(LLM-CF code)"
    model_class, config, _, (train, _, _) = split_for("LLMCFDeepFM", DATASET, root, {"weight_init": "kaiming"})
    with pytest.raises(UserError, match="weight_init='kaiming': expected official or xavier"):
        model_class(config, train._dataset)


def test_positions_rank_rows_within_users_and_a_repeated_pair_keeps_its_first() -> None:
    users = torch.tensor([3, 3, 3, 5, 7, 7])
    assert row_positions(users).tolist() == [0, 1, 2, 0, 0, 1]
    keys = torch.tensor([30, 12, 30, 9, 12, 4])  # key 30 twice (positions 4 and 1), 12 twice (2 and 0)
    positions = torch.tensor([4, 2, 1, 0, 0, 3])
    found_keys, found_positions = first_positions(keys, positions)
    assert found_keys.tolist() == [4, 9, 12, 30] and found_positions.tolist() == [3, 0, 0, 1]
    # one user's every row: positions reach n - 1, and key 5's last row must still sort after key 6's
    found_keys, found_positions = first_positions(torch.tensor([6, 5, 5]), torch.tensor([0, 1, 2]))
    assert found_keys.tolist() == [5, 6] and found_positions.tolist() == [1, 0]


def test_each_rows_examples_are_shuffled_by_a_fixed_order_of_its_own() -> None:
    """A permutation per row, the same every time, and different across rows (so the label of the
    k-th example is not fixed by its position: retrieval returns two positives first)."""
    keys = torch.arange(1000, 1200) * 977
    order = example_order(keys, 4)
    assert all(sorted(row) == [0, 1, 2, 3] for row in order.tolist())
    assert torch.equal(order, example_order(keys, 4))
    assert len({tuple(row) for row in order.tolist()}) >= 12  # of the 24 orders of 4
    first = torch.bincount(order[:, 0], minlength=4)
    assert int(first.min()) >= 25  # every example comes first in about a quarter of the rows


@pytest.mark.parametrize("template", ["given", "inferred"])
def test_the_pool_is_the_seeded_rows_with_prompts_of_their_target_latest_history_and_label(built, monkeypatch, template) -> None:
    """build_pool's prompts, written from the rule: rows a seeded draw of cot_rows training rows; a
    row's prompt the target's text, the texts of its cot_history_items most recent earlier items and
    its true label, keyed user|item|position; the generation settings and the CoT vectors' file are
    the run's own, and the pool holds exactly those rows with their vectors."""
    from recbole_llm.data.text import TextTemplate, infer_template
    from recbole_llm.llm.encoders import slug
    from recbole_llm.model import llmcf

    config, dataset = built["config"], built["train"]._dataset
    inter = dataset.inter_feat
    seen: dict = {}

    def fake_generation(folder, config_, settings, prompts):
        seen["settings"], seen["prompts"] = settings, prompts
        return {key: f"because {i}" for i, key in enumerate(prompts)}

    def fake_vectors(path, keys, cots, encoder, load, progress):
        seen["vectors"] = (path, keys, cots, encoder)
        return np.arange(len(keys) * 3, dtype=np.float32).reshape(len(keys), 3)

    from recbole_llm.data import text as text_module

    n = len(inter)
    rows = sorted(np.random.default_rng(5).choice(n, size=7, replace=False).tolist())
    shown = next(r for r in rows if int(inter["item_length"][r]) > 0)
    textless = {str(dataset.id2token("item_id", int(i)))  # items without text, a target and a shown one: ""
                for i in (inter["item_id"][rows[0]], inter["item_id_list"][shown, int(inter["item_length"][shown]) - 1])}

    def texts_but_two(*args):
        return {k: v for k, v in real_item_texts(*args).items() if k not in textless}

    real_item_texts = text_module.item_texts
    monkeypatch.setattr(text_module, "item_texts", texts_but_two)
    monkeypatch.setattr(llmcf, "generate_or_explain", fake_generation)
    monkeypatch.setattr(cot, "encode_cots", fake_vectors)
    saved = {k: config[k] for k in ("cot_history_items", "cot_seed", "cot_rows", "cot_batch_size", "item_text_template")}
    config["cot_history_items"], config["cot_seed"], config["cot_rows"], config["cot_batch_size"] = 2, 5, 7, 3
    if template == "inferred":  # no template in the config: the dataset's .item columns give it
        config["item_text_template"] = None
    try:
        pool = llmcf.build_pool(config, dataset)
    finally:
        for k, v in saved.items():
            config[k] = v
    folder = built["root"] / DATASET
    texts = real_item_texts(folder, DATASET, TextTemplate.from_config(["Title: {title}.", "Brand: {brand}."], ())
                            if template == "given" else infer_template(folder, DATASET))
    texts.update(dict.fromkeys(textless, ""))
    users, items, labels = inter["user_id"].tolist(), inter["item_id"].tolist(), inter["label"].long().tolist()
    position = [users[:r].count(users[r]) for r in range(n)]  # rows are in (user, time) order
    expected = {}
    for r in rows:
        past = inter["item_id_list"][r, :int(inter["item_length"][r])].tolist()
        item_token = dataset.id2token("item_id", items[r])
        key = f"{dataset.id2token('user_id', users[r])}|{item_token}|{position[r]}"
        expected[key] = cot.cot_prompt(texts[str(item_token)], [texts[str(dataset.id2token("item_id", i))] for i in past[-2:]],
                                       labels[r])
    assert any(int(inter["item_length"][r]) > 2 for r in rows)  # the history is cut somewhere
    assert sum("[]" in prompt for prompt in expected.values()) >= 1  # a textless item shows as []
    assert seen["prompts"] == expected
    assert seen["settings"] == cot.CotSettings(str(config["cot_generator"]), "greedy", 6, 2, 3)
    path, keys, cots, encoder = seen["vectors"]
    assert path == cot.cot_files(Path(config["data_path"]), DATASET, str(config["cot_generator"]), str(config["llm_encoder"]))[1]
    assert keys == list(expected) and encoder == slug(str(config["llm_encoder"]))
    assert cots == {key: f"because {i}" for i, key in enumerate(expected)}
    for name, column in (("user", "user_id"), ("item", "item_id"), ("label", "label")):
        assert pool[name].tolist() == [int(inter[column][r]) for r in rows]
    assert pool["position"].tolist() == [position[r] for r in rows]
    assert torch.equal(pool["history"], inter["item_id_list"][rows].long())
    torch.testing.assert_close(pool["cot"], torch.arange(21, dtype=torch.float32).reshape(7, 3))
