"""Edge cases of the shared math, each against a hand computation: users with a single training
item, nodes of degree one, and the first item id (RecBole's padding is 0, so real items start at 1)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.data.interaction import Interaction

from recbole_llm.errors import UserError
from recbole_llm.model.alpharec import mean_of_items
from recbole_llm.model.layers import (
    SampledInfoNCE,
    SymmetricGraph,
    TrainPositives,
    csr_product,
    info_nce_by_id,
    light_propagate,
    negative_groups,
    normalized_adjacency,
    sampled_info_nce,
)


def test_mean_of_items_with_one_two_and_no_training_items() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    # user 0: item 2 once; user 1: items 1 and 3 (item 3 recorded twice, one edge); user 2: nothing
    interactions = sp.coo_matrix((np.ones(4), ([0, 1, 1, 1], [2, 1, 3, 3])), shape=(3, 4))
    got = mean_of_items(interactions, vectors)
    expected = np.stack([vectors[2], (vectors[1] + vectors[3]) / 2, np.zeros(3)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_normalized_adjacency_with_a_node_of_degree_one() -> None:
    # users 0..2, items 0..2; user 0 - item 0 only (both of degree one), user 1 - items 1 and 2,
    # user 2 - item 2; item 1 has degree one as well
    interactions = sp.coo_matrix((np.ones(4), ([0, 1, 1, 2], [0, 1, 2, 2])), shape=(3, 3))
    dense = np.zeros((6, 6))
    for u, i in zip(interactions.row, interactions.col):
        dense[u, 3 + i] = dense[3 + i, u] = 1.0
    degree = dense.sum(1)
    expected = dense / np.sqrt(np.outer(degree, degree))
    got = normalized_adjacency(interactions, 3, 3).to_dense().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("built_from", ["csr", "coo"])
def test_symmetric_graph_propagation_and_its_gradient_by_hand(built_from: str) -> None:
    """LightGCN's propagation over the CSR graph: the mean of x, Ax, A^2 x, and its gradient
    (A symmetric: d/dx sum(w * mean) = (w + A w + A^2 w) / 3), written with dense numpy products;
    built from the CSR matrix or from a COO one such as RecBole's norm_adj_matrix."""
    interactions = sp.coo_matrix((np.ones(5), ([0, 1, 1, 2, 2], [0, 1, 2, 0, 2])), shape=(3, 3))
    adjacency = normalized_adjacency(interactions, 3, 3)
    dense = adjacency.to_dense().double().numpy()
    graph = SymmetricGraph(adjacency if built_from == "csr" else adjacency.to_sparse_coo())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    weights = torch.randn(6, 4, generator=g, dtype=torch.float64)
    graph.values = graph.values.double()
    ego = x.clone().requires_grad_()
    out = light_propagate(graph, ego, 2)
    xn, wn = x.numpy(), weights.numpy()
    np.testing.assert_allclose(out.detach().numpy(), (xn + dense @ xn + dense @ dense @ xn) / 3, rtol=1e-12)
    (out * weights).sum().backward()
    np.testing.assert_allclose(ego.grad.numpy(), (wn + dense.T @ wn + dense.T @ dense.T @ wn) / 3, rtol=1e-12)


def test_csr_product_of_a_rectangular_matrix_and_its_gradient_by_hand() -> None:
    """A users x items matrix (2 x 3, e.g. each user's mean over its items): A x and the gradient
    A^T w against dense numpy products. Its transpose is 3 x 2; built with A's own shape, the CSR
    conversion read past its buffers and the process aborted."""
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 0, 1], [0, 2, 2]]), torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64),
                                  (2, 3), check_invariants=True)
    dense = coo.to_dense().numpy()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    out = csr_product(coo)(x)
    np.testing.assert_allclose(out.detach().numpy(), dense @ x.detach().numpy(), rtol=1e-12)
    (out * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), dense.T @ w.numpy(), rtol=1e-12)


def test_csr_product_of_an_asymmetric_matrix_and_its_gradient_by_hand() -> None:
    """An edge-dropped view is not symmetric: x -> A x twice, gradient (A^T)^2 w, against dense
    numpy products (a duplicate COO entry is summed, as torch's COO product does; the last node
    has lost all its edges, so the shape cannot be read off the indices)."""
    index = torch.tensor([[0, 0, 1, 2, 2, 2], [1, 2, 2, 0, 1, 1]])
    values = torch.tensor([0.5, -1.0, 2.0, 1.5, 0.25, 0.75], dtype=torch.float64)
    coo = torch.sparse_coo_tensor(index, values, (4, 4), check_invariants=True)
    dense = coo.to_dense().numpy()
    assert not np.allclose(dense, dense.T)
    multiply = csr_product(coo)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(4, 2, generator=g, dtype=torch.float64)
    out = multiply(multiply(x))
    np.testing.assert_allclose(out.detach().numpy(), dense @ dense @ x.detach().numpy(), rtol=1e-12)
    (out * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), dense.T @ dense.T @ w.numpy(), rtol=1e-12)


def test_symmetric_graph_refuses_an_asymmetric_matrix_and_copies_like_a_module() -> None:
    """Its backward multiplies by A for A^T, so an asymmetric matrix is refused; the CSR parts are
    buffers, so the graph deep-copies (RecBole's FLOPs count copies the model) and stays out of
    state dicts."""
    asymmetric = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 1]]), torch.tensor([1.0, 2.0]), (2, 2), check_invariants=True)
    with pytest.raises(ValueError, match="differs from its transpose"):
        SymmetricGraph(asymmetric)
    mirrored_edges = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]), (2, 2), check_invariants=True)
    with pytest.raises(ValueError, match="differs from its transpose"):  # the same edges both ways, other weights
        SymmetricGraph(mirrored_edges)
    rectangular = torch.sparse_coo_tensor(torch.tensor([[0, 1], [0, 1]]), torch.tensor([1.0, 2.0]), (2, 3), check_invariants=True)
    with pytest.raises(ValueError, match="differs from its transpose"):  # its entries mirror, its shape does not
        SymmetricGraph(rectangular)
    with pytest.raises(ValueError, match="expected a sparse COO or CSR"):
        SymmetricGraph(torch.eye(2))
    graph = SymmetricGraph(normalized_adjacency(sp.coo_matrix(([1.0], ([0], [0])), shape=(1, 1)), 1, 1))
    twin = copy.deepcopy(graph)
    assert torch.equal(twin.matrix().to_dense(), graph.matrix().to_dense())
    assert twin.matrix().to_dense().tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert graph.state_dict() == {}


def test_user_uniform_pairs_reach_users_with_a_single_item() -> None:
    # user 0: item 1 only; user 1: items 1, 2, 3; user 2: nothing (never drawn)
    positives = TrainPositives(sp.coo_matrix((np.ones(4), ([0, 1, 1, 1], [1, 1, 2, 3])), shape=(3, 5)), 5)
    users, items = positives.sample_user_positive_pairs(6000, torch.Generator().manual_seed(0))
    assert set(users.tolist()) == {0, 1}
    assert abs((users == 0).double().mean().item() - 0.5) < 0.03
    assert set(items[users == 0].tolist()) == {1} and set(items[users == 1].tolist()) == {1, 2, 3}


def test_negatives_reach_the_first_item_in_first_draws_and_redraws() -> None:
    # user 0 trained on nothing: its draws are uniform over 1..5; user 1 trained on 3..5: nearly
    # every draw of it is redrawn and must still land on 1 and 2 evenly
    positives = TrainPositives(sp.coo_matrix((np.ones(3), ([1, 1, 1], [3, 4, 5])), shape=(2, 6)), 6)
    generator = torch.Generator().manual_seed(0)
    first = positives.sample_negatives(torch.zeros(4000, dtype=torch.long), 1, generator).view(-1)
    counts = torch.bincount(first, minlength=6)[1:].double() / len(first)
    assert (counts - 0.2).abs().max() < 0.03
    redrawn = positives.sample_negatives(torch.ones(4000, dtype=torch.long), 1, generator).view(-1)
    assert set(redrawn.tolist()) == {1, 2} and abs((redrawn == 1).double().mean().item() - 0.5) < 0.03


def _info_nce_row_by_row(anchors: np.ndarray, positives: np.ndarray, ids: list[int], tau: float,
                         candidates: np.ndarray | None) -> float:
    """InfoNCE from its definition over every batch row, repetitions included:
    mean_i -log exp(cos(a_i, p_i)/tau) / sum_c exp(cos(a_i, c)/tau), c = the candidates or the
    batch's positives (each repetition a candidate of its own)."""
    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    pool = [positives[j] for j in ids] if candidates is None else list(candidates)
    total = 0.0
    for i in ids:
        a = unit(anchors[i])
        denominator = sum(np.exp(a @ unit(c) / tau) for c in pool)
        total += -np.log(np.exp(a @ unit(positives[i]) / tau) / denominator)
    return total / len(ids)


def test_info_nce_by_id_is_the_batch_infonce_with_its_repetitions() -> None:
    """Computed once per distinct id, the loss and its gradient are those of every batch row,
    repeated rows and (in-batch) repeated candidates counted as often as they occur."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(6, 4, generator=g, dtype=torch.float64)
    positives = torch.randn(6, 4, generator=g, dtype=torch.float64)
    others = torch.randn(5, 4, generator=g, dtype=torch.float64)
    ids = [3, 1, 3, 3, 0, 5, 1]                      # ids 3 and 1 repeat; 2 and 4 absent
    tau = 0.3
    for candidates in (None, others):
        expected = _info_nce_row_by_row(anchors.numpy(), positives.numpy(), ids, tau,
                                        None if candidates is None else candidates.numpy())
        got = info_nce_by_id(anchors, positives, torch.tensor(ids), tau, candidates)
        assert abs(float(got) - expected) < 1e-10
    # Gradient: the same as the plain row-by-row loss written in torch over the repeated rows.
    a1, p1 = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
    a2, p2 = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
    index = torch.tensor(ids)
    info_nce_by_id(a1, p1, index, tau).backward()
    a, p = torch.nn.functional.normalize(a2[index], dim=-1), torch.nn.functional.normalize(p2[index], dim=-1)
    (-(torch.log_softmax(a @ p.T / tau, dim=1).diagonal()).mean()).backward()
    torch.testing.assert_close(a1.grad, a2.grad)
    torch.testing.assert_close(p1.grad, p2.grad)


@pytest.mark.parametrize("index_dtype", [torch.long, torch.int32])
@pytest.mark.parametrize("n_items", [7, 40], ids=["scores-against-all-items", "gathered-items"])
def test_sampled_info_nce_with_rows_is_the_loss_over_every_sample(n_items: int, index_dtype: torch.dtype) -> None:
    """Each distinct user passed once with ``rows`` gives the loss and gradients of the samples
    written out one by one (repeated users, repeated negatives), on both of its paths: scores
    against all items (7 items <= 2 negatives x 4 dims) and gathered item vectors (40 > 8), with
    int64 or int32 ids."""
    g = torch.Generator().manual_seed(1)
    users = torch.randn(3, 4, generator=g, dtype=torch.float64)
    items = torch.randn(n_items, 4, generator=g, dtype=torch.float64)
    rows = torch.tensor([2, 0, 2, 2, 1, 0])
    positives = torch.tensor([1, 5, 3, 1, 6, 0], dtype=index_dtype)
    negatives = torch.tensor([[2, 2], [6, 4], [0, 5], [4, 4], [3, 1], [5, 2]], dtype=index_dtype)
    tau = 0.2
    u, v = users.numpy(), items.numpy()
    expected = np.mean([
        -np.log(np.exp(u[r] @ v[p] / tau) / (np.exp(u[r] @ v[p] / tau) + sum(np.exp(u[r] @ v[j] / tau) for j in negs)))
        for r, p, negs in zip(rows.tolist(), positives.tolist(), negatives.tolist())])
    u1, i1 = users.clone().requires_grad_(), items.clone().requires_grad_()
    got = sampled_info_nce(u1, i1, positives, negatives, tau, rows)
    assert abs(float(got.detach()) - expected) < 1e-12
    got.backward()
    # Gradient: the same as one user row per sample (the default, rows=None).
    u2, i2 = users.clone().requires_grad_(), items.clone().requires_grad_()
    sampled_info_nce(u2[rows], i2, positives, negatives, tau).backward()
    torch.testing.assert_close(u1.grad, u2.grad)
    torch.testing.assert_close(i1.grad, i2.grad)


@pytest.mark.parametrize("with_mask", [True, False], ids=["dense-mask", "sorted-keys"])
def test_membership_and_negatives_on_both_lookup_paths(with_mask: bool) -> None:
    """Catalogues of more than 64M user x item cells (Book-Crossing) answer membership from sorted
    keys instead of the dense mask: both answer as a set of the training pairs does, with
    broadcast shapes and any integer type, and no negative is a training item of its user."""
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 7, 30), rng.integers(1, 9, 30)
    positives = TrainPositives(sp.coo_matrix((np.ones(30), (rows, cols)), shape=(7, 9)), 9)
    if not with_mask:
        positives.mask = None
    trained = set(zip(rows.tolist(), cols.tolist()))
    users = torch.arange(7, dtype=torch.int32).view(-1, 1)
    items = torch.arange(1, 9).view(1, -1)
    expected = [[(u, i) in trained for i in range(1, 9)] for u in range(7)]
    assert positives.contains(users, items).tolist() == expected
    drawn_for = torch.tensor([0, 3, 5, 6])
    negatives = positives.sample_negatives(drawn_for, 50, torch.Generator().manual_seed(0))
    assert negatives.dtype == torch.long and negatives.shape == (4, 50)
    as_int32 = positives.sample_negatives(drawn_for, 50, torch.Generator().manual_seed(0), dtype=torch.int32)
    assert as_int32.dtype == torch.int32 and torch.equal(as_int32.long(), negatives)
    assert not any((u, i) in trained for u, row in zip(drawn_for.tolist(), negatives.tolist()) for i in row)
    assert int(negatives.min()) >= 1 and int(negatives.max()) <= 8


def test_the_dense_mask_is_kept_up_to_64m_cells_and_no_further() -> None:
    cells = 64 * 2**20  # one user: cells = items
    assert TrainPositives(sp.csr_matrix((1, cells)), cells).mask.shape == (cells,)
    assert TrainPositives(sp.csr_matrix((1, cells + 1)), cells + 1).mask is None  # sorted keys instead
    assert TrainPositives(sp.csr_matrix((2, cells // 2 + 1)), cells // 2 + 1).mask is None  # users x items counts


def test_negative_groups_reads_the_named_item_field_or_says_what_is_missing() -> None:
    feat = Interaction({"item_id": torch.arange(3), "source": torch.tensor([0, 1, 1], dtype=torch.int32)})
    assert negative_groups({"negative_groups": None}, SimpleNamespace(item_feat=feat)) is None
    groups = negative_groups({"negative_groups": "source"}, SimpleNamespace(item_feat=feat))
    assert groups.dtype == torch.long and groups.tolist() == [0, 1, 1]
    for item_feat in (None, Interaction({"item_id": torch.arange(3)})):
        with pytest.raises(UserError, match="no 'source' field"):
            negative_groups({"negative_groups": "source"}, SimpleNamespace(item_feat=item_feat))


@pytest.mark.parametrize("grouped", [False, True], ids=["all-items", "within-groups"])
def test_draws_come_from_the_generator_given(grouped: bool) -> None:
    """With a generator, positives and negatives (first draws and redraws) depend on it alone: the
    same seed gives the same draws whatever the global random stream did in between."""
    rows, cols = [0, 0, 1, 1, 2], [1, 2, 3, 4, 5]
    groups = torch.tensor([0, 0, 0, 0, 1, 1]) if grouped else None  # items 1-3 and 4-5
    positives = TrainPositives(sp.coo_matrix((np.ones(5), (rows, cols)), shape=(3, 6)), 6, groups)

    def draws(global_seed: int) -> list:
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(11)
        users, items = positives.sample_user_positive_pairs(200, generator)
        return [users.tolist(), items.tolist(), positives.sample_negatives(users, 8, generator).tolist()]

    assert draws(0) == draws(1)


@pytest.mark.parametrize("sampling", ["user", "interaction"])
def test_pairs_come_from_the_user_uniform_sampler_or_the_batch(sampling: str) -> None:
    """``train_sampling: user`` (AlphaRec's reference) ignores RecBole's batch and draws users
    uniformly, then one of their items; ``interaction`` keeps the batch's own pairs. Either way
    every negative avoids its user's training items."""
    rows, cols = [0, 1, 1, 2, 2, 2], [1, 2, 3, 1, 4, 5]
    objective = SampledInfoNCE({"tau": 0.2, "num_negs": 3, "train_sampling": sampling},
                               sp.coo_matrix((np.ones(6), (rows, cols)), shape=(3, 6)), 6)
    batch_users, batch_items = torch.zeros(3000, dtype=torch.long), torch.ones(3000, dtype=torch.long)
    torch.manual_seed(0)
    users, items, negatives = objective.pairs(batch_users, batch_items)
    trained = set(zip(rows, cols))
    if sampling == "user":
        assert set(users.tolist()) == {0, 1, 2}
        assert all((u, i) in trained for u, i in zip(users.tolist(), items.tolist()))
    else:
        assert torch.equal(users, batch_users) and torch.equal(items, batch_items)
    assert negatives.shape == (3000, 3)
    assert not any((u, i) in trained for u, row in zip(users.tolist(), negatives.tolist()) for i in row)
