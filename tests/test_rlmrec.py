"""RLMRec-Con / RLMRec-Gen on RLMRec's own backbones and RecBole's, and SimGCL, on the tiny Amazon
fixture with random profile vectors written straight into feature files (no LLM runs here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.data.features import dataset_ids, write_feature_file
from recbole_llm.errors import UserError
from recbole_llm.llm.profiles import profile_feature_file
from recbole_llm.model.rlmrec import RLMRecCon, RLMRecGen
from recbole_llm.runner import run
from tests.conftest import split_for

DATASET = "amazon-beauty"
PROFILE_DIM = 24
SMALL = {"embedding_size": 16, "train_batch_size": 64}  # several steps per epoch


def write_profiles(root: Path, leave_out_user: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Random profile vectors for every user and item of the fixture, as `recbole-llm profile`
    would leave them (smollm2 generator, minilm encoder); returns token -> vector per entity."""
    folder = root / DATASET
    rng = np.random.default_rng(7)
    written = {}
    for kind, entity in (("user_profile", "user"), ("item_profile", "item")):
        ids = [t for t in dataset_ids(folder, DATASET, entity) if t != leave_out_user]
        vectors = rng.normal(size=(len(ids), PROFILE_DIM)).astype(np.float32)
        write_feature_file(profile_feature_file(folder, DATASET, kind), ids, vectors, {"generator": "smollm2"})
        written[entity] = dict(zip(ids, vectors))
    return written


@pytest.fixture
def profiled_root(amazon_root: Path) -> Path:
    write_profiles(amazon_root)
    return amazon_root


def build(root: Path, model: str, small: bool = True, **overrides):
    model_class, config, dataset, (train, _, _) = split_for(model, DATASET, root, {**(SMALL if small else {}), **overrides})
    net = model_class(config, train._dataset)
    net.train()
    return config, dataset, train, net


def test_profiles_are_aligned_frozen_buffers(amazon_root: Path) -> None:
    written = write_profiles(amazon_root)
    _, dataset, train, model = build(amazon_root, "RLMRecCon")
    assert not model.user_profiles.requires_grad and not model.item_profiles.requires_grad
    assert {"user_profiles", "item_profiles"} <= {name for name, _ in model.named_buffers()}
    assert not any("profile" in name for name, _ in model.named_parameters())
    assert "user_profiles" not in model.state_dict()  # inputs, rebuilt from the feature files
    for token in ("U003", "U017"):  # rows follow RecBole's ids, not the file's order
        np.testing.assert_array_equal(model.user_profiles[dataset.token2id("user_id", token)].numpy(), written["user"][token])
    np.testing.assert_array_equal(model.item_profiles[dataset.token2id("item_id", "B0011")].numpy(), written["item"]["B0011"])
    loss = model.calculate_loss(next(iter(train)))
    assert len(loss) == 3  # BPR, the regulariser, alignment
    sum(loss).backward()
    assert model.user_profiles.grad is None and model.item_profiles.grad is None
    assert model.mapper[0].weight.grad.abs().sum() > 0
    assert model.backbone.user_embedding.weight.grad.abs().sum() > 0


def test_alignment_reuses_the_backbones_propagation(profiled_root: Path) -> None:
    for backbone, propagations in (("LightGCN", 1), ("SGL", 3), ("SimGCL", 3)):
        _, _, train, model = build(profiled_root, "RLMRecCon", backbone=backbone)
        calls = []
        original = model.backbone.forward
        model.backbone.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
        loss = model.calculate_loss(next(iter(train)))
        assert len(calls) == propagations, backbone  # no extra propagation for the alignment
        assert all(torch.isfinite(part) for part in loss) and model.backbone.main_view is None


def test_mask_ratio_is_honoured(profiled_root: Path) -> None:
    _, _, train, model = build(profiled_root, "RLMRecGen", mask_ratio=0.25)
    real_nodes = 40 + 30
    nodes = model.sample_masked_nodes()
    assert len(nodes) == len(set(nodes.tolist())) == int(real_nodes * 0.25)
    assert not {0, model.n_users} & set(nodes.tolist())  # padding user / item never masked
    assert not torch.equal(nodes, model.sample_masked_nodes())  # a new draw every step
    with torch.no_grad():
        model.mask_token.fill_(3.0)
    users, items = model._masked_ego(nodes)
    ego = torch.cat([users, items])
    masked = torch.zeros(len(ego), dtype=torch.bool)
    masked[nodes] = True
    assert (ego[masked] == 3.0).all()
    original = torch.cat([model.backbone.user_embedding.weight, model.backbone.item_embedding.weight])
    assert torch.equal(ego[~masked], original[~masked])
    loss = model.calculate_loss(next(iter(train)))
    sum(loss).backward()
    assert model.mask_token.grad.abs().sum() > 0 and model.decoder[0].weight.grad.abs().sum() > 0
    assert isinstance(model.backbone.user_embedding, torch.nn.Embedding)  # the real one is back
    assert model.node_profiles.grad is None


@pytest.mark.parametrize("model, backbone, code, plain_model", [
    ("RLMRecCon", "LightGCN", "RLMRec", "RLMRecLightGCN"), ("RLMRecCon", "SGL", "RLMRec", "RLMRecSGL"),
    ("RLMRecGen", "SimGCL", "RLMRec", "RLMRecSimGCL"), ("RLMRecCon", "SGL", "RecBole", "SGL"),
    ("RLMRecGen", "SimGCL", "SELFRec", "SimGCL")])
def test_zero_weight_reproduces_the_backbone(profiled_root: Path, model: str, backbone: str, code: str,
                                             plain_model: str) -> None:
    """Same seed and backbone settings, lambda = 0: the same metrics and, bit for bit, the same
    trained backbone (the alignment draws nothing from the run's random streams, so sampling,
    edge dropping and noise stay the same)."""
    weight = {"RLMRecCon": "align_weight", "RLMRecGen": "recon_weight"}[model]
    common = dict(data_path=profiled_root, epochs=2, output=None, verbose=False)
    # The reference's RLMRec rows use other L2 weights than its plain backbones: the same here.
    same = {**SMALL, "reg_weight": 1e-5, "n_layers": 3} if code == "RLMRec" else SMALL
    plain = run(plain_model, DATASET, overrides=same, **common)
    wrapped = run(model, DATASET, overrides={**same, "backbone": backbone, "backbone_code": code, weight: 0.0}, **common)
    aligned = run(model, DATASET, overrides={**same, "backbone": backbone, "backbone_code": code}, **common)
    assert wrapped["test"] == plain["test"] and wrapped["valid"] == plain["valid"]
    assert wrapped["config"]["n_layers"] == plain["config"]["n_layers"]
    mark = "" if code == "RLMRec" else f", {code} code"
    assert wrapped["label"] == aligned["label"] == f"RLMRec-{model[-3:]}({backbone}{mark})"
    plain_state, wrapped_state, aligned_state = (torch.load(r["checkpoint"])["state_dict"] for r in (plain, wrapped, aligned))
    for key, value in plain_state.items():
        torch.testing.assert_close(wrapped_state[f"backbone.{key}"], value, rtol=0, atol=0)
    assert not torch.equal(aligned_state["backbone.user_embedding.weight"], plain_state["user_embedding.weight"])


def test_simgcl_trains_and_its_loss_decreases(profiled_root: Path) -> None:
    config, _, train, model = build(profiled_root, "SimGCL")
    assert config["eps"] == 0.1 and config["cl_weight"] == 0.5 and model.n_layers == 2
    with torch.no_grad():  # readout: mean of layers 1..L, without the ego layer (reference SimGCL)
        ego, graph = model.get_ego_embeddings(), model.norm_adj_matrix
        layer_1 = torch.sparse.mm(graph, ego)
        expected = (layer_1 + torch.sparse.mm(graph, layer_1)) / 2
        torch.testing.assert_close(torch.cat(model.forward()), expected)
        assert not torch.allclose(torch.cat(model.forward(perturbed=True)), expected)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = next(iter(train))
    losses = []
    for _ in range(25):
        rec, cl = model.calculate_loss(batch)
        optimizer.zero_grad()
        (rec + cl).backward()
        optimizer.step()
        losses.append((rec + cl).item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05
    model.eval()  # scores use the noise-free view: deterministic
    first = model.full_sort_predict(batch)
    model.restore_user_e = model.restore_item_e = None
    torch.testing.assert_close(model.full_sort_predict(batch), first, rtol=0, atol=0)


def test_gen_on_simgcl_runs_end_to_end(profiled_root: Path) -> None:
    record = run("RLMRecGen", DATASET, data_path=profiled_root, epochs=2, output=None, verbose=False,
                 overrides={**SMALL, "backbone": "SimGCL"})
    assert record["label"] == "RLMRec-Gen(SimGCL)" and record["llm_enhanced"]
    assert record["config"]["mask_ratio"] == 0.05 and record["config"]["recon_tau"] == 0.2  # SimGCL's row
    assert 0 < record["test"]["recall@20"] <= 1


def test_missing_profile_file_names_the_command(amazon_root: Path, capsys: pytest.CaptureFixture) -> None:
    from recbole_llm.cli import main

    with pytest.raises(UserError) as error:  # generating them is tested in test_recbole_doors.py
        run("RLMRecCon", DATASET, data_path=amazon_root, output=None, verbose=False, overrides={"llm_generate": False})
    message = str(error.value)
    assert "30 item and 40 user profiles of amazon-beauty with smollm2" in message
    assert (f"`recbole-llm profile -d amazon-beauty --generator smollm2 --encoder minilm "
            f"--data-path {amazon_root.resolve()}`") in message
    assert not list((amazon_root / DATASET).glob("*profile*"))  # nothing generated on the way
    code = main(["run", "-m", "RLMRecGen", "-d", DATASET, "--data-path", str(amazon_root), "--no-generate",
                 "--set", "profile_generator=mymodel"])
    err = capsys.readouterr().err.strip()
    # Before it, the terminal shows what the run was doing (it is not --quiet); the error is one line.
    errors = [line for line in err.splitlines() if line.startswith("recbole-llm: error: ")]
    assert code == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0] and "--generator mymodel" in errors[0]


def test_profile_missing_for_a_kept_user(amazon_root: Path) -> None:
    write_profiles(amazon_root, leave_out_user="U005")
    with pytest.raises(UserError, match=r"1 users of amazon-beauty have no vector .*\(e.g. U005\); expected one per id, "
                                        r"re-create it with `recbole-llm profile -d amazon-beauty --generator smollm2 "
                                        r"--encoder minilm"):
        build(amazon_root, "RLMRecCon")


def test_shuffled_profiles_are_a_fixed_permutation(profiled_root: Path) -> None:
    *_, plain = build(profiled_root, "RLMRecCon")
    *_, shuffled = build(profiled_root, "RLMRecCon", shuffle_profiles=True, seed=5)
    *_, again = build(profiled_root, "RLMRecCon", shuffle_profiles=True, seed=6)
    for name in ("user_profiles", "item_profiles"):
        a, b = getattr(plain, name), getattr(shuffled, name)
        assert torch.equal(b[0], a[0])  # padding stays
        assert not torch.equal(a, b)
        assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))  # same vectors, other ids
        assert torch.equal(b, getattr(again, name))  # one permutation whatever the run's seed


def test_labels_and_settings() -> None:
    ref = {"backbone_code": "RLMRec", "profile_checks": True}  # the defaults: the reference's backbones and prompts
    assert RLMRecCon.run_label({**ref, "backbone": "SGL"}) == "RLMRec-Con(SGL)"
    assert RLMRecCon.run_label({**ref, "backbone": "SGL", "backbone_code": "RecBole"}) == "RLMRec-Con(SGL, RecBole code)"
    # Records written before backbone_code existed ran RecBole's LightGCN/SGL and SELFRec's SimGCL.
    assert RLMRecCon.run_label({"backbone": "SGL", "profile_checks": True}) == "RLMRec-Con(SGL, RecBole code)"
    assert RLMRecGen.run_label({**ref, "backbone": "LightGCN", "shuffle_profiles": True}) == \
        "RLMRec-Gen(LightGCN, shuffled profiles)"
    # A record from before the keys: RecBole's backbone and the unchecked profiles.
    assert RLMRecCon.run_label({}) == "RLMRec-Con(LightGCN, RecBole code, unchecked profiles)"
    assert RLMRecGen.run_label({**ref, "backbone": "SGL", "llm_encoder": "/m/e5-large/"}) == \
        "RLMRec-Gen(SGL, smollm2+e5-large)"
    assert RLMRecCon.run_label({**ref, "backbone": "LightGCN", "profile_checks": False}) == \
        "RLMRec-Con(LightGCN, unchecked profiles)"
    assert RLMRecCon.run_label({"backbone": "SimGCL", "profile_checks": True, "profile_generator": "/m/Llama-3-8B/",
                                "llm_encoder": "minilm"}) == "RLMRec-Con(SimGCL, SELFRec code, Llama-3-8B+minilm)"


def test_reference_settings_per_backbone(profiled_root: Path) -> None:
    """RLMRec's own backbones with the reference's Amazon-book rows (*_plus.yml, *_gene.yml)."""
    expected = {  # model, backbone -> n_layers, reg_weight, keep_rate, and the backbone's own settings
        ("RLMRecCon", "LightGCN"): (3, 1e-7, 0.8, {}),
        ("RLMRecCon", "SGL"): (3, 1e-5, 0.8, {"cl_weight": 0.1, "cl_tau": 0.2}),
        ("RLMRecCon", "SimGCL"): (3, 1e-5, 1.0, {"cl_weight": 0.1, "cl_tau": 0.2, "eps": 0.9}),
        ("RLMRecGen", "LightGCN"): (2, 1e-7, 0.8, {}),
    }
    for (model, backbone), (layers, reg, keep, own) in expected.items():
        config, _, _, net = build(profiled_root, model, small=False, backbone=backbone)
        assert type(net.backbone).__name__ == f"RLMRec{backbone}"
        assert (net.backbone.n_layers, net.backbone.reg_weight, net.backbone.keep_rate) == (layers, reg, keep)
        assert config["embedding_size"] == 32 and config["train_batch_size"] == 4096
        assert (config["learning_rate"], config["eval_step"], config["stopping_step"]) == (0.001, 3, 4)
        assert all(getattr(net.backbone, key) == value for key, value in own.items()), (model, backbone)


def test_backbone_settings_default_to_the_backbones_own(profiled_root: Path) -> None:
    config, _, _, model = build(profiled_root, "RLMRecCon", backbone="SGL", backbone_code="RecBole",
                                ssl_weight=0.2, align_tau=0.3)
    assert model.backbone.n_layers == 3 and model.backbone.type == "ED"  # RecBole's SGL.yaml
    assert model.backbone.reg_weight == 1e-5  # RecBole's, not the reference row's mapping
    assert model.backbone.ssl_weight == 0.2 and model.align_tau == 0.3 and config["align_tau"] == 0.3
    *_, gen = build(profiled_root, "RLMRecGen", backbone="SGL")
    assert (gen.mask_ratio, gen.recon_tau, gen.recon_weight) == (0.2, 0.2, 0.1)  # the reference's SGL row


def test_unknown_backbone(profiled_root: Path) -> None:
    with pytest.raises(UserError, match=r"backbone 'NGCF' with backbone_code 'RLMRec' is not supported; expected "
                                        r"one of LightGCN \(RLMRec code\), SGL \(RLMRec code\)"):
        build(profiled_root, "RLMRecCon", backbone="NGCF")
    with pytest.raises(UserError, match="backbone 'SimGCL' with backbone_code 'RecBole' is not supported"):
        build(profiled_root, "RLMRecCon", backbone="SimGCL", backbone_code="RecBole")


@pytest.mark.parametrize("model", ["RLMRecCon", "RLMRecGen"])
def test_alignment_follows_the_backbones_loss_reduction(profiled_root: Path, model: str) -> None:
    """RecBole's SGL sums its losses over the batch, where the reference averages: the alignment is
    summed too (batch size x its mean), so lambda weighs it against the backbone as in the reference."""

    def last_part(net, batch) -> torch.Tensor:
        # Gen masks nodes from its own generator: replay the same draw for both computations.
        state = net.mask_generator.get_state() if model == "RLMRecGen" else None
        part = net.calculate_loss(batch)[-1]
        if state is not None:
            net.mask_generator.set_state(state)
        return part

    for code, summed in (("RLMRec", False), ("RecBole", True)):
        _, _, train, net = build(profiled_root, model, backbone="SGL", backbone_code=code)
        batch = next(iter(train))
        assert net.backbone.sums_over_batch is summed
        scaled = last_part(net, batch)
        net.backbone.sums_over_batch = False  # the same step as a batch mean
        mean = last_part(net, batch)
        torch.testing.assert_close(scaled, mean * (len(batch) if summed else 1))
        if model == "RLMRecCon":  # the mean is the reference's term: lambda x InfoNCE
            user_all, item_all = net.backbone.forward(*([net.backbone.train_graph] if summed else []))
            align = net.alignment_loss(user_all, item_all, batch[net.USER_ID], batch[net.ITEM_ID], batch[net.NEG_ITEM_ID])
            torch.testing.assert_close(mean, net.align_weight * align)


def test_simgcl_noise_and_contrastive_loss_from_their_definitions(profiled_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SimGCL's Eq. 7 and Eq. 3, written out: every layer e_k = A e_{k-1} gets
    eps * sign(e_k) * u / |u| with u ~ U(0, 1) (here a known draw), the readout is the mean of
    layers 1..L, and the loss is InfoNCE between two such views over the batch's distinct users and
    distinct items, the other batch nodes being the negatives, at temperature cl_tau."""
    _, _, train, model = build(profiled_root, "SimGCL", cl_tau=0.3, eps=0.2)
    draws = [torch.rand(model.n_users + model.n_items, SMALL["embedding_size"], generator=torch.Generator().manual_seed(s))
             for s in range(4)]
    given = iter(draws)
    monkeypatch.setattr(torch, "rand_like", lambda t: next(given))
    with torch.no_grad():
        ego, graph = model.get_ego_embeddings().double().numpy(), model.norm_adj_matrix.to_dense().double().numpy()
        users = torch.tensor([1, 4, 4, 9])
        items = torch.tensor([2, 2, 5, 7])
        loss = model.contrastive_loss(users, items).item()

    def view(noises: list[torch.Tensor]) -> np.ndarray:
        layer, layers = ego, []
        for u in noises:
            layer = graph @ layer
            u = u.double().numpy()
            layer = layer + 0.2 * np.sign(layer) * u / np.linalg.norm(u, axis=1, keepdims=True)
            layers.append(layer)
        return np.mean(layers, axis=0)

    first, second = view(draws[:2]), view(draws[2:])

    def info_nce(a: np.ndarray, b: np.ndarray) -> float:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return float(np.mean([-np.log(np.exp(a[i] @ b[i] / 0.3) / np.exp(a[i] @ b.T / 0.3).sum())
                              for i in range(len(a))]))

    user_rows, item_rows = [1, 4, 9], [model.n_users + i for i in (2, 5, 7)]
    expected = info_nce(first[user_rows], second[user_rows]) + info_nce(first[item_rows], second[item_rows])
    assert loss == pytest.approx(expected, rel=1e-5)


def test_simgcl_weighs_its_contrastive_term_by_cl_weight(profiled_root: Path) -> None:
    """The loss parts: LightGCN's BPR + regulariser, then cl_weight x the contrastive loss (pinned
    against its definition above), with the same noise draws."""
    _, _, train, model = build(profiled_root, "SimGCL", cl_weight=0.3)
    batch = next(iter(train))
    torch.manual_seed(3)
    contrastive = model.contrastive_loss(batch[model.USER_ID], batch[model.ITEM_ID])
    torch.manual_seed(3)
    _, weighted = model.calculate_loss(batch)
    torch.testing.assert_close(weighted, 0.3 * contrastive)


def test_rlmrec_modules_and_settings_as_the_reference(profiled_root: Path) -> None:
    """The MLPs' hidden width is (d_profile + d_cf) // 2; Gen's mask token is one learnable row and
    its maskable nodes are every real user and item; per-backbone values are written back to the
    config (the run record shows them); a mapping is the reference's, RecBole's code keeps its own."""
    config, _, _, con = build(profiled_root, "RLMRecCon", backbone="SGL")
    assert [layer.out_features for layer in con.mapper if hasattr(layer, "out_features")] == [(PROFILE_DIM + 16) // 2, 16]
    assert config["align_tau"] == 0.5 and config["align_weight"] == 0.01  # the SGL row
    assert "item_profiles" not in con.state_dict() and "user_profiles" not in con.state_dict()
    config, _, _, gen = build(profiled_root, "RLMRecGen", backbone="LightGCN")
    assert [layer.out_features for layer in gen.decoder if hasattr(layer, "out_features")] == [(PROFILE_DIM + 16) // 2, PROFILE_DIM]
    assert (config["recon_tau"], config["mask_ratio"], config["recon_weight"]) == (0.5, 0.15, 0.1)
    assert gen.mask_token.shape == (1, 16)
    assert sorted(gen.maskable.tolist()) == [n for n in range(gen.n_users + gen.n_items) if n not in (0, gen.n_users)]
    assert not {"node_profiles", "maskable"} & set(gen.state_dict())
    *_, tiny = build(profiled_root, "RLMRecGen", mask_ratio=0.001)
    assert tiny.n_masked == 1  # at least one node
    for bad in (0.0, 1.0):
        with pytest.raises(UserError, match=rf"mask_ratio={bad}: expected a fraction of nodes between 0 and 1"):
            build(profiled_root, "RLMRecGen", mask_ratio=bad)
    *_, recbole_lightgcn = build(profiled_root, "RLMRecCon", backbone="LightGCN", backbone_code="RecBole")
    assert recbole_lightgcn.backbone.reg_weight == 1e-5  # RecBole's LightGCN.yaml, not the reference row's 1e-7
    *_, unnamed = build(profiled_root, "RLMRecCon", backbone=None)
    assert type(unnamed.backbone).__name__ == "RLMRecLightGCN"
