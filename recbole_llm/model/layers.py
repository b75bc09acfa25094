"""Pieces the LLM-enhanced models share: the normalised user-item graph and its propagation,
InfoNCE over sampled negatives, uniform negative sampling that excludes training positives, and
the LLM-vector projectors."""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recbole_llm.errors import UserError

# The graph models multiply by CSR matrices (SymmetricGraph, csr_product); torch announces once per
# process that CSR support is beta, which every graph run would print. Only that notice is hidden.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


def normalized_adjacency(interactions: sp.spmatrix, n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite user-item graph (users first), as a sparse CSR tensor.

    Built directly with COO/CSR (LightGCN's normalisation; isolated nodes keep degree 0 -> 0).
    Entry (i, j) is d_i^-1/2 x d_j^-1/2, one rounding either way, so the matrix is exactly symmetric.
    """
    inter = sp.coo_matrix(interactions, shape=(n_users, n_items))
    inter.sum_duplicates()  # a repeated interaction is one edge (the values are not used)
    rows = np.concatenate([inter.row, inter.col + n_users])
    cols = np.concatenate([inter.col + n_users, inter.row])
    n = n_users + n_items
    adj = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n))
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    norm = sp.csr_matrix(sp.diags(inv_sqrt) @ adj @ sp.diags(inv_sqrt))
    norm.sort_indices()
    return torch.sparse_csr_tensor(torch.from_numpy(norm.indptr.astype(np.int64)),
                                   torch.from_numpy(norm.indices.astype(np.int64)),
                                   torch.from_numpy(norm.data.astype(np.float32)), (n, n),
                                   check_invariants=False)  # SciPy's sorted CSR is valid; opting out silences torch's warning


class _CSRProduct(torch.autograd.Function):
    """A x for a sparse CSR A, with the gradient A^T g from a CSR A^T given alongside."""

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, transposed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.transposed = transposed
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.transposed, grad)


def csr_product(adjacency: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> A x, differentiable in x, for a sparse COO matrix multiplied several times (e.g. an
    edge-dropped view of the graph, not symmetric): A and A^T are converted to CSR once instead of
    on every product and every backward (see :class:`SymmetricGraph`)."""
    coo = adjacency.coalesce()
    matrix, transposed = coo.to_sparse_csr(), _transposed(coo).to_sparse_csr()
    return lambda x: _CSRProduct.apply(matrix, transposed, x)


def _transposed(coo: torch.Tensor) -> torch.Tensor:
    """The transpose of a coalesced COO matrix, coalesced (its entries in row order)."""
    rows, cols = coo.shape
    return torch.sparse_coo_tensor(coo.indices().flip(0), coo.values(), (cols, rows), check_invariants=False).coalesce()


class SymmetricGraph(nn.Module):
    """A symmetric sparse matrix (the normalised user-item graph) and ``graph(x)`` = A x,
    differentiable in x.

    Faster than ``torch.sparse.mm`` on a COO matrix, as RecBole's LightGCN does it: torch's COO
    product converts the matrix to CSR on every call, and its CSR backward transposes it on every
    call; here the matrix is CSR once and the backward is A g (A^T = A). On ml-100k's graph a
    2-layer propagation with its gradient takes about 6 ms against 24 ms (one CPU thread). The
    sums run in another order than the COO product's (the same values to about 1e-7). The CSR
    parts are kept as buffers (they move with the model; a CSR tensor cannot be deep-copied, as
    RecBole's FLOPs count does with the model) and not saved in checkpoints.
    """

    def __init__(self, adjacency: torch.Tensor) -> None:
        super().__init__()
        if adjacency.layout == torch.sparse_coo:  # e.g. RecBole's norm_adj_matrix
            coo = adjacency.coalesce()
            mirrored = _transposed(coo)
            if not (coo.shape == mirrored.shape and torch.equal(coo.indices(), mirrored.indices())
                    and torch.equal(coo.values(), mirrored.values())):
                raise ValueError("SymmetricGraph: the matrix differs from its transpose; expected a symmetric graph")
            adjacency = coo.to_sparse_csr()
        if adjacency.layout != torch.sparse_csr:
            raise ValueError(f"SymmetricGraph: expected a sparse COO or CSR matrix, got layout {adjacency.layout}")
        self.register_buffer("crow", adjacency.crow_indices(), persistent=False)
        self.register_buffer("col", adjacency.col_indices(), persistent=False)
        self.register_buffer("values", adjacency.values(), persistent=False)
        self.size = tuple(adjacency.shape)

    def matrix(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.col, self.values, self.size, check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        matrix = self.matrix()
        return _CSRProduct.apply(matrix, matrix, x)  # A^T = A


def light_propagate(graph: SymmetricGraph, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN propagation: the mean of layers 0..n_layers of repeated multiplication by the graph."""
    layers = [ego]
    for _ in range(n_layers):
        layers.append(graph(layers[-1]))
    return torch.stack(layers, dim=1).mean(dim=1)


def sampled_info_nce(users: torch.Tensor, items: torch.Tensor, positives: torch.Tensor,
                     negatives: torch.Tensor, tau: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled-softmax InfoNCE: mean of -log e^{s(u,i+)/tau} / (e^{s(u,i+)/tau} + sum_j e^{s(u,j)/tau}).

    ``users`` [U, d] are user vectors, ``rows`` [B] the row of ``users`` of each of the B samples
    (default: row b for sample b, U = B), ``items`` [N, d] all item vectors, ``positives`` [B] and
    ``negatives`` [B, K] item ids; s is the dot product (pass normalised vectors for cosine). A
    batch of user-uniform samples repeats users (4,096 samples hold about 930 of ml-100k's 943), so
    passing each distinct user once with ``rows`` scores U x N instead of B x N. For a catalogue
    smaller than K x d the scores against all items are one matrix product and the sampled ones are
    picked from it (much faster on CPU than gathering B x K item vectors).
    """
    if rows is None:
        rows = torch.arange(len(users), device=users.device)
    users = users / tau  # on U x d rather than on the B x (1 + K) logits
    if items.shape[0] <= negatives.shape[1] * items.shape[1]:
        # A sample's positive and negatives picked together, [B, 1 + K], from the flattened U x N
        # scores: index_select is 3x faster than gather here, and its backward adds repeated picks
        # in index order (deterministic, and no B x N gradient). int32 picks where U x N allows
        # spare a copy of the B x K negatives when they come as int32.
        scores = (users @ items.T).reshape(-1)
        index = torch.int32 if len(scores) < 2**31 else torch.long
        picks = torch.cat([positives.view(-1, 1).to(index), negatives.to(index)], dim=1)
        picks = picks + rows.to(index).view(-1, 1) * items.shape[0]
        logits = scores.index_select(0, picks.view(-1)).view(picks.shape)
    else:
        users = users.index_select(0, rows)
        pos = (users * items[positives]).sum(-1, keepdim=True)
        neg = torch.einsum("bd,bkd->bk", users, items[negatives])
        logits = torch.cat([pos, neg], dim=1)
    # logsumexp(logits) - logits[:, 0] averaged, i.e. cross-entropy with the positive in column
    # 0; log_softmax's backward makes fewer passes over the logits than logsumexp's.
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class TrainPositives:
    """The training interactions as sorted keys, for sampling positives and excluding them."""

    def __init__(self, interactions: sp.spmatrix, n_items: int, item_groups: torch.Tensor | None = None) -> None:
        csr = sp.csr_matrix(interactions)
        csr.sum_duplicates()
        self.n_items = n_items
        self.indptr = torch.from_numpy(csr.indptr.astype(np.int64))
        self.items = torch.from_numpy(csr.indices.astype(np.int64))
        users = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        self.keys = torch.from_numpy(users.astype(np.int64) * n_items + csr.indices.astype(np.int64))  # sorted
        self.active_users = torch.nonzero(torch.from_numpy(np.diff(csr.indptr)) > 0).view(-1)
        # Negatives within the user's group of items (the source dataset of a combination): the
        # items sorted by group, where each group starts and how many it has, each user's group.
        self.group_items = None
        if item_groups is not None:
            groups = item_groups.long().clone()
            groups[0] = -1  # RecBole's padding item is in no group
            order = torch.argsort(groups, stable=True)
            order = order[groups[order] >= 0]
            self.group_items = order
            counts = torch.bincount(groups[order], minlength=int(groups.max()) + 1)
            self.group_size = counts
            self.group_start = torch.cumsum(counts, 0) - counts
            first = torch.from_numpy(csr.indices[np.minimum(csr.indptr[:-1], max(len(csr.indices) - 1, 0))].astype(np.int64))
            self.user_group = torch.where(torch.from_numpy(np.diff(csr.indptr)) > 0, groups[first], torch.full_like(first, -1))
        # A dense user x item mask answers membership ~10x faster than a binary search; keep it
        # while it is small (<= 64 MB), e.g. ml-100k's 943 x 1,683.
        self.mask = None
        if csr.shape[0] * n_items <= 64 * 2**20:
            self.mask = torch.zeros(csr.shape[0] * n_items, dtype=torch.bool)
            self.mask[self.keys] = True

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether each (user, item) is a training interaction; the shapes broadcast."""
        if self.mask is not None:  # at most 64M entries: int32 keys suffice
            keys = users.to(torch.int32) * self.n_items + items.to(torch.int32)
            return self.mask.index_select(0, keys.reshape(-1)).view(keys.shape)  # ~5x faster than mask[keys]
        keys = users.long() * self.n_items + items.long()
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample_negatives(self, users: torch.Tensor, k: int, generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.long) -> torch.Tensor:
        """[B, k] items drawn uniformly (with replacement) from 1..n_items-1, none a training
        positive of its user (item 0 is RecBole's padding). ``dtype=torch.int32`` skips the
        copy of the draws to int64 (same values)."""
        users = users.cpu()
        out = self._draw(users, k, generator)
        # keys broadcast from B users to their B x k draws: one B-long product instead of B x k
        todo = torch.nonzero(self.contains(users.view(-1, 1), out.view(len(users), k)).view(-1)).view(-1)
        while len(todo):  # redraw only the collisions; a draw's owner is users[index // k]
            owners = users[todo // k]
            draws = self._draw(owners, 1, generator)
            out[todo] = draws
            todo = todo[self.contains(owners, draws)]
        return out.view(len(users), k).to(dtype)

    def _draw(self, users: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """k uniform items per user, [B * k] user by user: from all items, or from the user's
        group when grouped."""
        if self.group_items is None:  # int32: the same values as int64 draws, from the same stream, faster
            return torch.randint(1, self.n_items, (len(users) * k,), generator=generator, dtype=torch.int32)
        group = self.user_group[users]
        if (group < 0).any():
            raise ValueError("a user without training items has no group to draw negatives from")
        group = group.repeat_interleave(k)
        size = self.group_size[group]
        offset = (torch.rand(len(group), generator=generator) * size).long().clamp(max=size - 1)
        return self.group_items[self.group_start[group] + offset]

    def sample_user_positive_pairs(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n (user, positive) pairs: users uniform over users with training items, then one of
        their training items uniformly (AlphaRec's reference sampler)."""
        users = self.active_users[torch.randint(len(self.active_users), (n,), generator=generator)]
        start, count = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        offset = (torch.rand(n, generator=generator) * count).long().clamp(max=count - 1)
        return users, self.items[start + offset]


class SampledInfoNCE:
    """AlphaRec's training signal, shared by every model trained with it: ``num_negs`` uniform
    negatives per positive that exclude the user's training items, cosine scores, temperature
    ``tau``; pairs drawn user-uniformly (``train_sampling: user``, the reference) or taken from
    RecBole's batch (``interaction``)."""

    def __init__(self, config, interactions: sp.spmatrix, n_items: int, item_groups: torch.Tensor | None = None) -> None:
        self.tau = float(config["tau"])
        self.num_negs = int(config["num_negs"])
        self.train_sampling = config["train_sampling"]
        if self.train_sampling not in ("user", "interaction"):
            raise ValueError(f"train_sampling '{self.train_sampling}': expected user or interaction")
        self.positives = TrainPositives(interactions, n_items, item_groups)

    def pairs(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, positives, negatives) for one step; ``users``/``items`` are RecBole's batch."""
        if self.train_sampling == "user":
            users, items = self.positives.sample_user_positive_pairs(len(users))
        else:
            users, items = users.cpu(), items.cpu()
        return users, items, self.positives.sample_negatives(users, self.num_negs, dtype=torch.int32)

    def loss(self, user_all: torch.Tensor, item_all: torch.Tensor, users: torch.Tensor,
             items: torch.Tensor) -> torch.Tensor:
        users, positives, negatives = (t.to(user_all.device) for t in self.pairs(users, items))
        distinct, rows = torch.unique(users, return_inverse=True)  # each user's vector normalised and scored once
        return sampled_info_nce(cosine(user_all.index_select(0, distinct)), cosine(item_all), positives, negatives,
                                self.tau, rows)


def negative_groups(config, dataset) -> torch.Tensor | None:
    """The group of every item (row = internal item id) that ``negative_groups`` names, e.g. the
    ``source`` of a combined dataset, so that negatives are drawn within the positive's group;
    None when it is unset (negatives from every item)."""
    field = config["negative_groups"]
    if not field:
        return None
    feat = dataset.item_feat
    if feat is None or field not in feat.columns:
        raise UserError(f"negative_groups={field!r}: the dataset's items have no '{field}' field; expected "
                        f"load_col to load it from the .item file (load_col: {{item: [item_id, {field}]}})")
    return feat[field].long()


class MLPProjector(nn.Sequential):
    """AlphaRec's projector: Linear -> LeakyReLU -> Linear (no activation after the last layer)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, d_hidden), nn.LeakyReLU(), nn.Linear(d_hidden, d_out))


# AlphaRec's reference sizes the MLP's hidden layer so that its first layer has the same number of
# weights for every LM it was run with: 768 x 6144 (BERT, RoBERTa), 1536 x 3072 (text-embedding-ada-002),
# 3072 x 1536 (text-embedding-3-large), 4096 x 1152 (the 7B LMs; multipliers 8, 2, 1/2 and 9/32).
REFERENCE_FIRST_LAYER_WEIGHTS = 4096 * 1152


def reference_hidden_width(d_in: int) -> int:
    """The reference's hidden width for an LM of width ``d_in``, extended to any width by keeping
    the first layer's weight count (MiniLM's 384 -> 12288, SmolLM2's 576 -> 8192)."""
    return max(1, round(REFERENCE_FIRST_LAYER_WEIGHTS / d_in))


def build_projector(kind: str, d_in: int, d_out: int, hidden_multiplier: float | None = None) -> nn.Module:
    """``mlp`` (Linear -> LeakyReLU -> Linear; hidden width :func:`reference_hidden_width`, or
    ``int(hidden_multiplier * d_in)`` when a multiplier is given) or ``linear`` (no bias, the
    paper's linear-mapping finding)."""
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "mlp":
        hidden = reference_hidden_width(d_in) if hidden_multiplier is None else max(1, int(hidden_multiplier * d_in))
        return MLPProjector(d_in, hidden, d_out)
    raise ValueError(f"projector '{kind}': expected mlp or linear")


def cosine(a: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine InfoNCE: mean over rows i of -log e^{cos(a_i, p_i)/tau} / sum_c e^{cos(a_i, c)/tau}.

    ``candidates`` [M, d] must hold every positive (in-batch negatives: pass ``positives`` itself),
    as in SGL, SimGCL and RLMRec's alignment; the stable logsumexp form of the ratio.
    """
    a = F.normalize(anchors, dim=-1) / tau  # scale the [B, d] side, not the [B, M] scores
    p, c = F.normalize(positives, dim=-1), F.normalize(candidates, dim=-1)
    return (torch.logsumexp(a @ c.T, dim=1) - (a * p).sum(-1)).mean()


def info_nce_by_id(anchors: torch.Tensor, positives: torch.Tensor, ids: torch.Tensor, tau: float,
                   candidates: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`info_nce` over the batch rows ``anchors[ids]`` / ``positives[ids]`` (tables indexed by
    id; a batch repeats ids), computed once per distinct id: with ``candidates`` (e.g. all nodes)
    as the candidates, without them in-batch (the batch's positives, repetitions included).

    Same value and gradient as ``info_nce(anchors[ids], positives[ids], candidates or
    positives[ids], tau)``: rows of one id are identical terms, so each distinct row is weighted
    by its count n_j, and a repeated in-batch candidate j adds n_j e^{s_j} to the sum, i.e. log n_j
    to its score inside the logsumexp. A batch of 4,096 ml-100k interactions holds about 1,000
    distinct items, so the [B, B] scores shrink about 16-fold.
    """
    distinct, counts = torch.unique(ids, return_counts=True)
    counts = counts.to(anchors.dtype)
    a = F.normalize(anchors[distinct], dim=-1) / tau
    p = F.normalize(positives[distinct], dim=-1)
    if candidates is None:
        scores = a @ p.T + counts.log()
    else:
        scores = a @ F.normalize(candidates, dim=-1).T
    return (counts * (torch.logsumexp(scores, dim=1) - (a * p).sum(-1))).sum() / len(ids)
