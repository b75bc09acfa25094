"""Semantic-ID quantizers for TIGER: Rajput et al., "Recommender Systems with Generative Retrieval"
(NeurIPS 2023); references EdoardoBotta/RQ-VAE-Recommender and MTandHJ/RecBoard (TIGER/).

An item's semantic ID is a tuple of L codes, one per level, found by *residual* quantization of its
LLM text vector: level 1 quantizes the vector, level 2 what level 1 left over, and so on, so
items that share a prefix are semantically close. Two quantizers, one interface
(``fit(x)`` -> ``codes(x)`` -> ``reconstruct(codes)``):

- :class:`ResidualKMeans` (``rqkmeans``): k-means on the vectors, then on the residuals, L times.
  No training loop; the seed notes (RecBoard, Amazon Beauty) found it beats a trained RQ-VAE.
- :class:`RQVAE` (``rqvae``): the paper's residual-quantized VAE. An MLP encoder maps the vector to
  a small latent, L codebooks quantize it residually, an MLP decoder reconstructs the vector.
  Loss per item = ||x - x_hat||^2 + sum over levels of ||sg[r_l] - e_l||^2 + beta ||r_l - sg[e_l]||^2
  (squared norms, all on one scale: summed over dimensions, then averaged over the batch, as in
  EdoardoBotta/RQ-VAE-Recommender ``modules/loss.py``; beta = 0.25, the paper's commitment
  weight); gradients pass the quantizer with the straight-through estimator; each codebook starts
  from k-means on the first batch's residuals. Trained for the paper's 20k epochs of batches of
  1,024, with the reference implementations' AdamW (1e-3; the paper's Adagrad at 0.4 diverges here).

Tuples may collide (two items, one tuple): :func:`disambiguate` appends the paper's extra code
that numbers the items sharing a tuple, so every item gets a unique ID.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from recbole_llm.progress import shown


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: (centroids [k, d], assignment [n]).

    An empty cluster is re-seeded with the point farthest from its centroid, so all k codes stay
    in use (an unused code is a wasted token for the generative model).
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k-means with {k} clusters needs at least {k} points, got {n}")
    # k-means++: each next seed drawn with probability proportional to its squared distance.
    centroids = x[torch.randint(n, (1,), generator=generator)]
    closest = torch.cdist(x, centroids).squeeze(1).pow(2)
    for _ in range(1, k):
        weights = closest.clamp_min(0)
        if float(weights.sum()) <= 0:  # fewer distinct points than k: any point will do
            weights = torch.ones_like(weights)
        nxt = torch.multinomial(weights, 1, generator=generator)
        centroids = torch.cat([centroids, x[nxt]])
        closest = torch.minimum(closest, torch.cdist(x, x[nxt]).squeeze(1).pow(2))
    assign = torch.cdist(x, centroids).argmin(1)
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        updated = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = torch.nonzero(counts == 0).view(-1)
        if len(empty):
            distance = (x - updated[assign]).pow(2).sum(1)
            updated[empty] = x[distance.topk(len(empty)).indices]
        new_assign = torch.cdist(x, updated).argmin(1)
        converged = torch.equal(new_assign, assign) and not len(empty)
        centroids, assign = updated, new_assign
        if converged:
            break
    return centroids, assign


def _sizes(codebook_size: int | Sequence[int], levels: int) -> list[int]:
    sizes = [int(codebook_size)] * levels if isinstance(codebook_size, (int, np.integer)) else [int(s) for s in codebook_size]
    if len(sizes) != levels:
        raise ValueError(f"{len(sizes)} codebook sizes for {levels} levels")
    return sizes


class ResidualKMeans:
    """Residual k-means (``rqkmeans``): level l clusters the residuals left by levels < l."""

    def __init__(self, levels: int = 3, codebook_size: int | Sequence[int] = 64, iters: int = 100, seed: int = 2020) -> None:
        self.sizes = _sizes(codebook_size, levels)
        self.iters = int(iters)
        self.seed = int(seed)
        self.codebooks: list[torch.Tensor] = []

    def fit(self, x: torch.Tensor) -> "ResidualKMeans":
        generator = torch.Generator().manual_seed(self.seed)
        residual = x.float()
        self.codebooks = []
        for size in self.sizes:
            centroids, assign = kmeans(residual, size, self.iters, generator)
            self.codebooks.append(centroids)
            residual = residual - centroids[assign]
        return self

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        residual = x.float()
        out = []
        for codebook in self.codebooks:
            code = torch.cdist(residual, codebook).argmin(1)
            out.append(code)
            residual = residual - codebook[code]
        return torch.stack(out, dim=1)

    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(codebook[codes[:, level]] for level, codebook in enumerate(self.codebooks))


def _mlp(sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:  # no activation on the output (a latent or a reconstruction)
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


# The paper trains the RQ-VAE with Adagrad at 0.4; here that diverges on ml-100k's MiniLM vectors
# (loss 2.8 -> 4e5 within 50 epochs, even with JAX/TensorFlow's accumulator start of 0.1, which is
# kept), so the default is the reference implementations' AdamW at 1e-3 (EdoardoBotta/RQ-VAE-
# Recommender configs/rqvae_*.gin: weight decay 1e-4; MTandHJ/RecBoard TIGER/configs/rqvae).
OPTIMIZERS = {
    "adamw": lambda params, lr, decay: torch.optim.AdamW(params, lr=lr, weight_decay=decay),
    "adam": lambda params, lr, decay: torch.optim.Adam(params, lr=lr, weight_decay=decay),
    "adagrad": lambda params, lr, decay: torch.optim.Adagrad(params, lr=lr, weight_decay=decay,
                                                             initial_accumulator_value=0.1, eps=1e-7),
}


def make_optimizer(name: str, parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The RQ-VAE's optimizer by name (ValueError for an unknown one)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](parameters, lr, weight_decay)


@dataclass
class RQVAELosses:
    total: torch.Tensor
    reconstruction: torch.Tensor
    quantization: torch.Tensor


class RQVAE(nn.Module):
    """The paper's residual-quantized VAE (``rqvae``): MLP encoder -> L residual codebooks -> MLP decoder.

    Defaults follow the paper and the reference: encoder widths 512-256-128, a 32-d latent,
    commitment weight beta 0.25, codebooks initialised by k-means on the first batch.
    """

    def __init__(self, input_dim: int, levels: int = 3, codebook_size: int | Sequence[int] = 64,
                 hidden_dims: Sequence[int] = (512, 256, 128), latent_dim: int = 32, beta: float = 0.25) -> None:
        super().__init__()
        self.sizes = _sizes(codebook_size, levels)
        self.beta = float(beta)
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(list(hidden_dims)), input_dim])
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(size, latent_dim) * 0.01) for size in self.sizes])
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def _kmeans_init(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """Codebook l = k-means centroids of the level-l residuals of the first batch: every code
        starts where latents are, so none is dead from the start."""
        residual = z.cpu()  # k-means draws from the CPU generator, wherever the model trains
        for codebook in self.codebooks:
            size = codebook.shape[0]
            if residual.shape[0] < size:
                raise ValueError(f"k-means initialisation of a {size}-code codebook needs a batch of at least {size}")
            centroids, assign = kmeans(residual, size, 10, generator)
            codebook.copy_(centroids)
            residual = residual - centroids[assign]
        self.initialised.fill_(True)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantized latent sum_l e_l, codes [n, L], quantization loss) of latents ``z``."""
        residual = z
        quantized = torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for codebook in self.codebooks:
            code = torch.cdist(residual.detach(), codebook.detach()).argmin(1)
            chosen = codebook[code]
            # codebook term pulls e_l to the (fixed) residual; commitment pulls the encoder to e_l.
            # Squared norms per item (summed over dimensions) like the reconstruction term, so that
            # beta weighs the commitment against reconstruction as the paper's loss does.
            codebook_term = (residual.detach() - chosen).pow(2).sum(1)
            commitment_term = (residual - chosen.detach()).pow(2).sum(1)
            loss = loss + (codebook_term + self.beta * commitment_term).mean()
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(code)
        return quantized, torch.stack(codes, dim=1), loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RQVAELosses]:
        z = self.encoder(x)
        quantized, codes, q_loss = self.quantize(z)
        # Straight-through estimator: the decoder sees the quantized latent, the encoder gets its gradient.
        x_hat = self.decoder(z + (quantized - z).detach())
        reconstruction = F.mse_loss(x_hat, x, reduction="none").sum(1).mean()
        return x_hat, codes, RQVAELosses(reconstruction + q_loss, reconstruction, q_loss)

    def fit(self, x: torch.Tensor, epochs: int = 20000, batch_size: int = 1024, lr: float = 1e-3,
            seed: int = 2020, optimizer: str = "adamw", weight_decay: float = 1e-4) -> list[float]:
        """Train on the item vectors ``x`` in mini-batches of ``batch_size`` for ``epochs`` (the
        paper's 20k epochs of 1,024) with ``optimizer`` (adamw, adam or adagrad); returns the mean
        loss per epoch."""
        generator = torch.Generator().manual_seed(seed)
        x = x.float()
        batch_size = min(batch_size, x.shape[0])
        optimizer = make_optimizer(optimizer, self.parameters(), lr, weight_decay)
        self.train()
        if not bool(self.initialised):
            with torch.no_grad():
                first = x[torch.randperm(x.shape[0], generator=generator)[:max(batch_size, max(self.sizes))].to(x.device)]
                self._kmeans_init(self.encoder(first), generator)
        history = []
        for _ in tqdm(range(epochs), desc="RQ-VAE epochs", unit="epoch", leave=False, disable=not shown()):
            order = torch.randperm(x.shape[0], generator=generator).to(x.device)
            total = 0.0
            for start in range(0, x.shape[0], batch_size):
                batch = x[order[start:start + batch_size]]
                _, _, losses = self(batch)
                optimizer.zero_grad()
                losses.total.backward()
                optimizer.step()
                total += float(losses.total.detach()) * len(batch)
            history.append(total / x.shape[0])
        self.eval()
        return history

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.encoder(x.float()))[1]

    @torch.no_grad()
    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        latent = sum(codebook[codes[:, level]] for level, codebook in enumerate(self.codebooks))
        return self.decoder(latent)


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """Append the paper's collision code: items sharing a tuple get 0, 1, 2, ... (in row order);
    every other item gets 0. The result has one more column and unique rows."""
    codes = np.asarray(codes, dtype=np.int64)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    extra = np.zeros(len(codes), dtype=np.int64)
    order = np.argsort(group, kind="stable")  # rows of one group together, in row order
    sorted_groups = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    extra[order] = np.arange(len(order)) - first_of_group
    return np.concatenate([codes, extra[:, None]], axis=1)


def collision_stats(codes: np.ndarray) -> dict[str, int]:
    """How many items share their tuple with another item, in how many tuples, largest group."""
    _, counts = np.unique(np.asarray(codes), axis=0, return_counts=True)
    return {"colliding_items": int(counts[counts > 1].sum()), "colliding_tuples": int((counts > 1).sum()),
            "max_items_per_tuple": int(counts.max()) if len(counts) else 0}


def codebook_usage(codes: np.ndarray, sizes: Sequence[int]) -> list[float]:
    """Per level, the fraction of the codebook's codes that at least one item uses."""
    codes = np.asarray(codes)
    return [round(len(np.unique(codes[:, level])) / size, 4) for level, size in enumerate(sizes)]
