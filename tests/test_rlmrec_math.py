"""RLMRec's own backbones and its alignment terms, pinned against computations written from the
reference's formulas (HKUDS/RLMRec encoder/models/loss_utils.py, model_utils.py and the
general_cf models) in float64 NumPy, with the random draws (edge masks, noise, masked nodes)
given. Nothing here calls the model's own helpers to compute what is expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_rlmrec import SMALL, build, profiled_root  # noqa: F401  (fixture)


def normalised_graph(net) -> np.ndarray:
    """D^-1/2 A D^-1/2 of the training user-item graph, users first, from the interactions."""
    inter = net.interaction_matrix.tocoo()
    n = net.n_users + net.n_items
    adjacency = np.zeros((n, n))
    adjacency[inter.row, net.n_users + inter.col] = 1.0
    adjacency[net.n_users + inter.col, inter.row] = 1.0
    degree = adjacency.sum(1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    return scale[:, None] * adjacency * scale[None, :]


def keep_edges(graph: np.ndarray, edges: np.ndarray, draw: np.ndarray, keep_rate: float) -> np.ndarray:
    """The reference's SpAdjEdgeDrop: edge j survives iff floor(u_j + keep) = 1, values unchanged."""
    kept = np.zeros_like(graph)
    survive = np.floor(draw + keep_rate) == 1
    rows, cols = edges[0, survive], edges[1, survive]
    kept[rows, cols] = graph[rows, cols]
    return kept


def sum_readout(graph: np.ndarray, ego: np.ndarray, layers: int, noise=None, eps: float = 0.0) -> np.ndarray:
    """sum_{k=0..L} e_k with e_k = A e_{k-1} (+ eps * sign(e_k) * u_k / |u_k| for a noisy view)."""
    layer, total = ego, ego.copy()
    for k in range(layers):
        layer = graph @ layer
        if noise is not None:
            u = noise[k]
            layer = layer + eps * np.sign(layer) * u / np.linalg.norm(u, axis=1, keepdims=True)
        total = total + layer
    return total


def bpr(users: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """cal_bpr_loss / batch: mean of softplus(s_neg - s_pos)."""
    return float(np.mean(np.log1p(np.exp((users * neg).sum(1) - (users * pos).sum(1)))))


def infonce(anchors: np.ndarray, positives: np.ndarray, candidates: np.ndarray, tau: float) -> float:
    """cal_infonce_loss / batch: mean of -cos(a, p)/tau + log sum_c exp(cos(a, c)/tau)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    a, p, c = unit(anchors), unit(positives), unit(candidates)
    return float(np.mean(-(a * p).sum(1) / tau + np.log(np.exp(a @ c.T / tau).sum(1))))


def mlp(module: torch.nn.Sequential, x: np.ndarray) -> np.ndarray:
    """Linear -> LeakyReLU(0.01) -> Linear, from the module's weights."""
    w1, b1 = module[0].weight.detach().double().numpy(), module[0].bias.detach().double().numpy()
    w2, b2 = module[2].weight.detach().double().numpy(), module[2].bias.detach().double().numpy()
    hidden = x @ w1.T + b1
    return np.where(hidden > 0, hidden, 0.01 * hidden) @ w2.T + b2


def given_draws(monkeypatch: pytest.MonkeyPatch, name: str, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """torch.<name> returns these known uniform draws, in order."""
    draws = [torch.rand(*shape, generator=torch.Generator().manual_seed(i), dtype=torch.float32) for i, shape in enumerate(shapes)]
    given = iter(draws)
    monkeypatch.setattr(torch, name, lambda *args, **kwargs: next(given))
    return [d.double().numpy() for d in draws]


def batch_of(train):
    batch = next(iter(train))
    return batch, (batch["user_id"].numpy(), batch["item_id"].numpy(), batch["neg_item_id"].numpy())


def ego_of(net) -> np.ndarray:
    return torch.cat([net.user_embedding.weight, net.item_embedding.weight]).detach().double().numpy()


def squared_norms(net) -> float:
    return float(sum((p.detach().double() ** 2).sum() for p in net.parameters()))


def test_lightgcn_trains_on_an_edge_dropped_graph_with_sum_readout(profiled_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, train, net = build(profiled_root, "RLMRecLightGCN", keep_rate=0.7, n_layers=2, reg_weight=0.01)
    batch, (u, i, j) = batch_of(train)
    edges = net.norm_adj_matrix._indices().numpy()
    (draw,) = given_draws(monkeypatch, "rand", [(edges.shape[1],)])
    bpr_loss, reg_loss = (part.item() for part in net.calculate_loss(batch))

    graph = normalised_graph(net)
    out = sum_readout(keep_edges(graph, edges, draw, 0.7), ego_of(net), 2)
    users, items = out[: net.n_users], out[net.n_users:]
    assert bpr_loss == pytest.approx(bpr(users[u], items[i], items[j]), rel=1e-5)
    assert reg_loss == pytest.approx(0.01 * squared_norms(net), rel=1e-5)  # whole tables, not the batch
    monkeypatch.undo()
    net.eval()  # scores: the full graph, no edge dropped
    full = sum_readout(graph, ego_of(net), 2)
    scores = net.full_sort_predict(batch).view(len(u), -1).detach().double().numpy()
    np.testing.assert_allclose(scores, full[u] @ full[net.n_users:].T, rtol=1e-4, atol=1e-6)


def test_sgl_views_on_their_own_dropped_graphs_and_all_node_negatives(profiled_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, train, net = build(profiled_root, "RLMRecSGL", keep_rate=0.6, cl_tau=0.4, cl_weight=0.3)
    batch, (u, i, j) = batch_of(train)
    edges = net.norm_adj_matrix._indices().numpy()
    first, second = given_draws(monkeypatch, "rand", [(edges.shape[1],)] * 2)
    bpr_loss, _, cl_loss = (part.item() for part in net.calculate_loss(batch))

    graph, ego, n_users = normalised_graph(net), ego_of(net), net.n_users
    main = sum_readout(graph, ego, 3)  # BPR: the full graph
    view_1 = sum_readout(keep_edges(graph, edges, first, 0.6), ego, 3)
    view_2 = sum_readout(keep_edges(graph, edges, second, 0.6), ego, 3)
    assert bpr_loss == pytest.approx(bpr(main[u], main[n_users + i], main[n_users + j]), rel=1e-5)
    all_users, all_items = view_2[1:n_users], view_2[n_users + 1:]  # every real node (row 0: padding)
    expected = (infonce(view_1[u], view_2[u], all_users, 0.4) + infonce(view_1[n_users + i], view_2[n_users + i], all_items, 0.4)
                + infonce(view_1[n_users + j], view_2[n_users + j], all_items, 0.4))
    assert cl_loss == pytest.approx(0.3 * expected, rel=1e-5)


def test_simgcl_noisy_views_sum_readout_and_all_node_negatives(profiled_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, train, net = build(profiled_root, "RLMRecSimGCL", eps=0.3, n_layers=2, cl_tau=0.25, cl_weight=0.2)
    batch, (u, i, j) = batch_of(train)
    n_nodes = net.n_users + net.n_items
    noise = given_draws(monkeypatch, "rand_like", [(n_nodes, SMALL["embedding_size"])] * 4)
    bpr_loss, _, cl_loss = (part.item() for part in net.calculate_loss(batch))

    graph, ego, n_users = normalised_graph(net), ego_of(net), net.n_users
    main = sum_readout(graph, ego, 2)
    view_1 = sum_readout(graph, ego, 2, noise[:2], eps=0.3)  # layer 0 stays noise-free
    view_2 = sum_readout(graph, ego, 2, noise[2:], eps=0.3)
    assert bpr_loss == pytest.approx(bpr(main[u], main[n_users + i], main[n_users + j]), rel=1e-5)
    expected = (infonce(view_1[u], view_2[u], view_2[1:n_users], 0.25)
                + infonce(view_1[n_users + i], view_2[n_users + i], view_2[n_users + 1:], 0.25))
    assert cl_loss == pytest.approx(0.2 * expected, rel=1e-5)


def test_con_alignment_is_the_references_kd_loss(profiled_root: Path) -> None:
    """kd_loss: InfoNCE of each batch user's CF embedding with its mapped profile against all users'
    mapped profiles, and of positive (negative) items against the batch's mapped positives
    (negatives); each a batch mean, summed; the last loss part is align_weight times it."""
    _, _, train, net = build(profiled_root, "RLMRecCon", backbone="SGL", align_tau=0.35, align_weight=0.05)
    batch, (u, i, j) = batch_of(train)
    *_, align_part = net.calculate_loss(batch)  # SGL (RLMRec code): the main view is the full graph

    main = sum_readout(normalised_graph(net.backbone), ego_of(net.backbone), 3)
    users, items = main[: net.n_users], main[net.n_users:]
    user_prf = mlp(net.mapper, net.user_profiles.double().numpy())  # row r: RecBole user id r
    item_prf = mlp(net.mapper, net.item_profiles.double().numpy())
    expected = (infonce(users[u], user_prf[u], user_prf[1:], 0.35) + infonce(items[i], item_prf[i], item_prf[i], 0.35)
                + infonce(items[j], item_prf[j], item_prf[j], 0.35))
    assert align_part.item() == pytest.approx(0.05 * expected, rel=1e-5)


def test_gen_reconstruction_is_the_references_recon_loss(profiled_root: Path) -> None:
    """Masked nodes' ego embeddings become the mask token for the backbone's whole step; the
    reconstruction is ssl_con_loss between sigma_up(e_hat) of the masked nodes and their profile
    vectors, the other masked nodes' profiles being the negatives; the last part is recon_weight x it."""
    _, _, train, net = build(profiled_root, "RLMRecGen", backbone="SGL", recon_tau=0.3, recon_weight=0.2, mask_ratio=0.2)
    with torch.no_grad():
        net.mask_token.normal_()
    batch, _ = batch_of(train)
    state = net.mask_generator.get_state()
    nodes = net.sample_masked_nodes().numpy()
    net.mask_generator.set_state(state)  # the step draws the same nodes
    *_, recon_part = net.calculate_loss(batch)

    ego = ego_of(net.backbone)
    ego[nodes] = net.mask_token.detach().double().numpy()
    main = sum_readout(normalised_graph(net.backbone), ego, 3)
    profiles = np.concatenate([net.user_profiles.double().numpy(), net.item_profiles.double().numpy()])
    decoded = mlp(net.decoder, main[nodes])
    expected = infonce(decoded, profiles[nodes], profiles[nodes], 0.3)
    assert recon_part.item() == pytest.approx(0.2 * expected, rel=1e-5)


@pytest.mark.parametrize("name, part", [("RLMRecCon", "mapper"), ("RLMRecGen", "decoder")])
def test_profile_mlps_start_as_the_references(profiled_root: Path, name: str, part: str) -> None:
    """The reference's _init_weight: xavier-uniform weights (bound sqrt(6 / (fan_in + fan_out))) and
    torch's default biases, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) - not zeros. Zero biases let Gen's
    decoder read its small CF inputs and pull them toward the profiles far harder than the reference."""
    net = build(profiled_root, name, backbone="LightGCN")[-1]
    layers = [m for m in getattr(net, part).modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 2
    for layer in layers:
        fan_out, fan_in = layer.weight.shape
        weight_bound, bias_bound = (6 / (fan_in + fan_out)) ** 0.5, fan_in ** -0.5
        assert layer.weight.abs().max() <= weight_bound and layer.weight.abs().max() > 0.9 * weight_bound
        assert layer.bias.abs().max() <= bias_bound and layer.bias.abs().max() > 0.9 * bias_bound
        assert abs(layer.bias.mean().item()) < 0.2 * bias_bound  # centred, as a uniform draw


def test_drop_edges_keeps_the_graphs_shape_and_the_kept_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Edge j survives iff floor(u_j + keep) = 1; the graph keeps its size even when a node loses
    every edge, and the kept values are not rescaled."""
    from recbole_llm.model.rlmrec_backbones import drop_edges

    index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    graph = torch.sparse_coo_tensor(index, torch.tensor([0.5, 0.5, 0.25, 0.25]), (5, 5), check_invariants=True).coalesce()
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.tensor([0.9, 0.1, 0.5, 0.05]))
    dropped = drop_edges(graph, 0.4)  # u >= 0.6 survives: edge (0, 1) only
    expected = np.zeros((5, 5))
    expected[0, 1] = 0.5
    assert dropped.shape == (5, 5)
    np.testing.assert_array_equal(dropped.to_dense().numpy(), expected)
    assert drop_edges(graph, 1.0) is graph  # nothing dropped, nothing drawn


def test_bad_keep_rate_and_layers_are_refused(profiled_root: Path) -> None:
    from recbole_llm.errors import UserError

    for keep in (0.0, 1.5):
        with pytest.raises(UserError, match=rf"keep_rate={keep}: expected the fraction of edges kept, in \(0, 1\]"):
            build(profiled_root, "RLMRecLightGCN", keep_rate=keep)
    assert build(profiled_root, "RLMRecLightGCN", keep_rate=1.0)[-1].keep_rate == 1.0
    assert build(profiled_root, "RLMRecLightGCN", keep_rate=None)[-1].keep_rate == 1.0  # unset: no dropping
    assert build(profiled_root, "SimGCL", n_layers=1)[-1].n_layers == 1
    with pytest.raises(UserError, match="n_layers=0: expected a whole number of at least 1"):
        build(profiled_root, "SimGCL", n_layers=0)
