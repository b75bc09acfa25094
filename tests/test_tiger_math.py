"""TIGER's math against computations written from the paper's formulas (Rajput et al., NeurIPS 2023,
section 3.1 and eq. 1): residual quantization, the RQ-VAE loss and its straight-through gradient,
residual k-means, and the labels that keep variants apart from the paper's configuration. The
beam search against an exhaustive search over the catalogue is in test_tiger.py (it needs the
fixture dataset)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_llm.model.quantizers import RQVAE, ResidualKMeans, kmeans, make_optimizer
from recbole_llm.model.tiger import REFERENCE, T5_PAPER, TIGER

BETA = 0.25


def _small_rqvae(seed: int = 0) -> tuple[RQVAE, torch.Tensor]:
    """A 2-level RQ-VAE with 3 codes per level and hand-set codebooks, and a batch of 7 inputs."""
    torch.manual_seed(seed)
    model = RQVAE(6, levels=2, codebook_size=3, hidden_dims=(5,), latent_dim=4, beta=BETA)
    with torch.no_grad():
        for codebook in model.codebooks:
            codebook.copy_(torch.randn_like(codebook))
    model.initialised.fill_(True)
    return model, torch.randn(7, 6)


def _by_hand(z: torch.Tensor, codebooks: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Residual quantization item by item: code = the nearest codeword to what is left; returns
    (codes [n, L], residuals r_l [n, d] and chosen codewords e_l [n, d] per level)."""
    codes, residuals, chosen = [], [], []
    residual = z.detach().clone()
    for codebook in codebooks:
        distances = torch.stack([((residual - word) ** 2).sum(1) for word in codebook.detach()], dim=1)
        code = distances.argmin(1)
        residuals.append(residual.clone())
        chosen.append(codebook.detach()[code])
        codes.append(code)
        residual = residual - codebook.detach()[code]
    return torch.stack(codes, 1), residuals, chosen


def _encoder_output(model: RQVAE) -> dict:
    """Capture the encoder's output z (with its gradient) during the next forward pass."""
    captured: dict = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["z"] = output

    model.encoder.register_forward_hook(hook)
    return captured


def test_residual_quantization_takes_the_nearest_codeword_of_what_is_left() -> None:
    model, x = _small_rqvae()
    z = model.encoder(x)
    quantized, codes, _ = model.quantize(z)
    expected_codes, _, chosen = _by_hand(z, list(model.codebooks))
    assert torch.equal(codes, expected_codes)
    torch.testing.assert_close(quantized, sum(chosen))
    assert torch.equal(model.codes(x), expected_codes)
    torch.testing.assert_close(model.reconstruct(expected_codes), model.decoder(sum(chosen)))
    assert len({tuple(c) for c in codes.tolist()}) > 1  # the case is not degenerate


def test_rqvae_loss_terms_are_per_item_squared_norms() -> None:
    """Loss = mean over items of ||x - x_hat||^2 + sum_l ||sg[r_l] - e_l||^2 + beta ||r_l - sg[e_l]||^2:
    every term summed over dimensions, so beta = 0.25 weighs commitment as the paper does."""
    model, x = _small_rqvae()
    x_hat, _, losses = model(x)
    z = model.encoder(x)
    _, residuals, chosen = _by_hand(z, list(model.codebooks))
    x_expected = model.decoder(sum(chosen))
    reconstruction = ((x_expected - x) ** 2).sum(1).mean()
    quantization = sum(((r - e) ** 2).sum(1) for r, e in zip(residuals, chosen)).mean() * (1 + BETA)
    torch.testing.assert_close(x_hat, x_expected)
    torch.testing.assert_close(losses.reconstruction, reconstruction)
    torch.testing.assert_close(losses.quantization, quantization)
    torch.testing.assert_close(losses.total, reconstruction + quantization)


def test_gradients_pass_the_quantizer_straight_through() -> None:
    """d loss / d z = d reconstruction / d x_q (straight through the quantizer) + (2 beta / B) sum_l
    (r_l - e_l) (commitment); d loss / d e_c = (2 / B) sum of (e_c - r) over the items that chose
    code c (the codebook term only: no reconstruction gradient reaches the codebooks)."""
    model, x = _small_rqvae()
    captured = _encoder_output(model)
    _, codes, losses = model(x)
    losses.total.backward()
    z = captured["z"]
    _, residuals, chosen = _by_hand(z, list(model.codebooks))
    batch = len(x)
    x_q = sum(chosen).clone().requires_grad_(True)
    ((model.decoder(x_q) - x) ** 2).sum(1).mean().backward()
    commitment = sum(r - e for r, e in zip(residuals, chosen)) * 2 * BETA / batch
    torch.testing.assert_close(z.grad, x_q.grad + commitment)
    for level, codebook in enumerate(model.codebooks):
        expected = torch.zeros_like(codebook)
        for item in range(batch):
            expected[codes[item, level]] += 2 / batch * (chosen[level][item] - residuals[level][item])
        torch.testing.assert_close(codebook.grad, expected)


def test_residual_kmeans_codes_are_nearest_centroids_of_the_residuals() -> None:
    """Each level's code is the nearest centroid of what the levels before left, and each centroid
    is the mean of the residuals that chose it (Lloyd's fixed point)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, generator=g)[torch.randint(8, (160,), generator=g)] + 0.3 * torch.randn(160, 5, generator=g)
    quantizer = ResidualKMeans(levels=2, codebook_size=[4, 3], iters=200, seed=1).fit(x)
    codes = quantizer.codes(x)
    residual = x.clone()
    for level, centroids in enumerate(quantizer.codebooks):
        distances = torch.stack([((residual - c) ** 2).sum(1) for c in centroids], dim=1)
        assert torch.equal(codes[:, level], distances.argmin(1))
        for code in range(len(centroids)):
            members = residual[codes[:, level] == code]
            assert len(members) > 0
            torch.testing.assert_close(centroids[code], members.mean(0), atol=1e-5, rtol=1e-5)
        residual = residual - centroids[codes[:, level]]
    torch.testing.assert_close(quantizer.reconstruct(codes), x - residual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_keeps_every_code_in_use(seed: int) -> None:
    """A heavy pile of identical points and a few outliers: every one of the k codes is used."""
    x = torch.cat([torch.zeros(40, 2), torch.tensor([[5.0, 5.0], [5.2, 5.0], [9.0, 9.0], [9.0, 9.3], [-4.0, 0.0]])])
    centroids, assign = kmeans(x, 5, 20, torch.Generator().manual_seed(seed))
    assert torch.bincount(assign, minlength=5).min() >= 1
    for code in range(5):
        torch.testing.assert_close(centroids[code], x[assign == code].mean(0))


def test_optimizers_by_name() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = make_optimizer("adamw", params, 1e-3, 1e-4)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 1e-4
    adagrad = make_optimizer("adagrad", params, 0.4)
    assert isinstance(adagrad, torch.optim.Adagrad) and adagrad.defaults["initial_accumulator_value"] == 0.1
    assert adagrad.defaults["weight_decay"] == 0.0  # no decay unless asked
    with pytest.raises(ValueError, match="optimizer 'sgd': expected one of adamw, adam, adagrad"):
        make_optimizer("sgd", params, 0.1)


PAPER = {**REFERENCE, **T5_PAPER, "rqvae_optimizer": "adamw", "rqvae_epochs": 20000, "llm_encoder": "minilm",
         "t5_num_decoder_layers": None}


def test_the_papers_configuration_is_labelled_tiger() -> None:
    assert PAPER["semantic_id_codebook_size"] == 256 and PAPER["learning_rate"] == 0.01
    assert T5_PAPER == {"t5_d_model": 128, "t5_d_ff": 1024, "t5_d_kv": 64, "t5_num_heads": 6, "t5_num_layers": 4}
    assert TIGER.run_label(PAPER) == "TIGER"
    assert TIGER.run_label({**PAPER, "t5_num_decoder_layers": 4}) == "TIGER"


@pytest.mark.parametrize(("change", "part"), [
    ({"semantic_id_method": "rqkmeans"}, "rqkmeans"),
    ({"rqvae_epochs": 300}, "RQ-VAE 300 epochs"),
    ({"rqvae_optimizer": None}, "RQ-VAE v1 loss"),
    ({"semantic_id_codebook_size": 64}, "64 codes"),
    ({"semantic_id_codebook_size": [64, 64, 32]}, "64x64x32 codes"),
    ({"semantic_id_codebook_size": None}, "scaled codebooks"),
    ({"llm_encoder": "/models/bge-small/"}, "bge-small"),
    ({"t5_d_model": None}, "scaled T5"),
    ({"t5_d_model": 64, "t5_num_layers": 2}, "T5 64-d 2+2 layers 6x64 heads FF 1024"),
    ({"t5_num_decoder_layers": 2}, "T5 128-d 4+2 layers 6x64 heads FF 1024"),
    ({"learner": "adamw", "learning_rate": 0.001, "tiger_lr_schedule": "constant"}, "adamw 0.001 constant"),
    ({"learning_rate": 0.003}, "adafactor 0.003 inverse_sqrt"),
    ({"tiger_lr_schedule": "constant"}, "adafactor 0.01 constant"),
    ({"tiger_warmup_steps": 500}, "warm-up 500"),
    ({"tiger_warmup_steps": None}, "warm-up 1 epoch"),
    ({"tiger_train_steps": 20000}, "20000 steps max"),
    ({"tiger_train_steps": None, "epochs": 30}, "max 30 epochs"),
    ({"tiger_train_steps": None, "epochs": 1}, "max 1 epoch"),
    ({"train_batch_size": 512}, "batch 512"),
])
def test_every_departure_is_named(change: dict, part: str) -> None:
    assert TIGER.run_label({**PAPER, **change}) == f"TIGER({part})"


def test_records_from_before_the_reference_defaults_keep_their_own_label() -> None:
    """A record of the old defaults (rqkmeans, sizes scaled, AdamW 1e-3 constant, epochs) is no
    longer shown as plain TIGER(rqkmeans)."""
    old = {"semantic_id_method": "rqkmeans", "semantic_id_codebook_size": None, "llm_encoder": "minilm",
           **{key: None for key in T5_PAPER}, "learner": "adamw", "learning_rate": 0.001,
           "tiger_lr_schedule": "constant", "epochs": 30, "train_batch_size": 256}
    assert TIGER.run_label(old) == "TIGER(rqkmeans, scaled codebooks, scaled T5, adamw 0.001 constant, max 30 epochs)"
    # Records older still carry no method: they ran residual k-means, the default of the time.
    unset = {k: v for k, v in old.items() if k != "semantic_id_method"}
    assert TIGER.run_label(unset) == TIGER.run_label(old)
    # Unset encoder and learner are MiniLM and Adam; a learner without a rate is named alone.
    bare = {k: v for k, v in old.items() if k not in ("llm_encoder", "learner", "learning_rate")}
    assert TIGER.run_label(bare) == "TIGER(rqkmeans, scaled codebooks, scaled T5, adam constant, max 30 epochs)"


def test_residual_kmeans_is_seeded_and_takes_as_many_codes_as_points() -> None:
    """The same seed gives the same codebooks (every seed of a run shares one set of semantic IDs),
    another seed other ones; k-means accepts k equal to the number of points (each its own code)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    first = ResidualKMeans(levels=2, codebook_size=5, iters=3, seed=7).fit(x)
    again = ResidualKMeans(levels=2, codebook_size=5, iters=3, seed=7).fit(x)
    other = ResidualKMeans(levels=2, codebook_size=5, iters=3, seed=8).fit(x)
    assert all(torch.equal(a, b) for a, b in zip(first.codebooks, again.codebooks))
    assert not all(torch.equal(a, b) for a, b in zip(first.codebooks, other.codebooks))
    centroids, assign = kmeans(x[:6], 6, 5, torch.Generator().manual_seed(0))
    assert sorted(assign.tolist()) == list(range(6))
    torch.testing.assert_close(centroids[assign], x[:6])
    with pytest.raises(ValueError, match="7 clusters needs at least 7 points"):
        kmeans(x[:6], 7, 5, torch.Generator().manual_seed(0))


def test_quantize_reports_the_reconstruction_error_of_its_codes() -> None:
    """Two clean clusters of two points each, one level of 2 codes: each point lies at squared
    distance 1 from its centroid, so the reported error is 1; a random code puts a point at 1 or
    101, so the random-code error is the mean of four such values. Vectors are not normalised."""
    from recbole_llm.data.semantic_ids import SemanticIdSettings, quantize

    points = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], dtype=np.float32)
    settings = SemanticIdSettings(method="rqkmeans", levels=1, codebook_sizes=(2,), normalize=False)
    codes, report = quantize(points, settings)
    assert codes[0, 0] == codes[1, 0] != codes[2, 0] == codes[3, 0]
    assert report["reconstruction_mse"] == pytest.approx(1.0)
    assert report["random_codes_reconstruction_mse"] in [pytest.approx(1 + 25 * k) for k in range(5)]


def test_quantize_reports_the_rqvae_loss_at_its_first_and_last_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole_llm.data.semantic_ids import SemanticIdSettings, quantize
    from recbole_llm.model.quantizers import RQVAE

    monkeypatch.setattr(RQVAE, "fit", lambda self, *args, **kwargs: [1.2345678, 0.5, 0.1234567])
    settings = SemanticIdSettings(method="rqvae", levels=2, codebook_sizes=(4, 4), rqvae_hidden_dims=(8,),
                                  rqvae_latent_dim=4, normalize=False)
    _, report = quantize(np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32), settings)
    assert report["rqvae_loss_first_last"] == [1.23457, 0.12346]


def test_codebook_usage_is_the_fraction_of_codes_in_use_to_four_places() -> None:
    from recbole_llm.model.quantizers import codebook_usage

    codes = np.array([[0, 5, 1], [0, 6, 1], [2, 7, 1]])
    # level 1: codes {0, 2} of 3; level 2: {5, 6, 7} of 9; level 3: {1} of 7 (1/7 = 0.142857...)
    assert codebook_usage(codes, (3, 9, 7)) == [0.6667, 0.3333, 0.1429]


@pytest.mark.parametrize(("n_items", "size"), [(16, 4), (17, 8), (1682, 64), (4096, 64), (4097, 128), (12_000, 128),
                                               (10**6, 256)])
def test_default_codebook_size_is_the_smallest_power_of_two_whose_square_covers_the_items(n_items: int, size: int) -> None:
    from recbole_llm.data.semantic_ids import default_codebook_size

    assert default_codebook_size(n_items) == size


def test_quantize_normalises_each_vector_alone_and_reads_any_float_type() -> None:
    """normalize=True divides each row by its own L2 norm: rows scaled by different factors give
    the codes and the error of the unit rows (a norm over the whole matrix would not); float64
    input gives what its float32 copy gives."""
    from recbole_llm.data.semantic_ids import SemanticIdSettings, quantize

    rng = np.random.default_rng(0)
    unit = rng.normal(size=(24, 5))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    scaled = unit * rng.uniform(0.5, 20.0, size=(24, 1))
    for method, extra in (("rqkmeans", {}), ("rqvae", {"rqvae_hidden_dims": (8,), "rqvae_latent_dim": 4,
                                                        "rqvae_epochs": 3, "rqvae_batch_size": 8})):
        settings = SemanticIdSettings(method=method, levels=2, codebook_sizes=(3, 3), normalize=True, **extra)
        codes_unit, report_unit = quantize(unit.astype(np.float32), settings)
        codes_scaled, report_scaled = quantize(scaled, settings)           # float64
        np.testing.assert_array_equal(codes_scaled, codes_unit)
        assert report_scaled["reconstruction_mse"] == pytest.approx(report_unit["reconstruction_mse"], rel=1e-4)
        if method == "rqkmeans":                                             # centroids of unit rows
            assert report_unit["reconstruction_mse"] < 1.0


def test_quantize_runs_residual_kmeans_with_the_settings_iterations_and_seed() -> None:
    """quantize's rqkmeans codes are those of ResidualKMeans built with the settings' levels, sizes,
    iterations and seed (on the L2-normalised vectors); another iteration count or seed changes them."""
    from recbole_llm.data.semantic_ids import SemanticIdSettings, quantize

    vectors = np.random.default_rng(3).normal(size=(40, 6)).astype(np.float32)
    unit = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=1)

    def direct(iters: int, seed: int) -> np.ndarray:
        return ResidualKMeans(levels=2, codebook_size=(4, 4), iters=iters, seed=seed).fit(unit).codes(unit).numpy()

    settings = SemanticIdSettings(method="rqkmeans", levels=2, codebook_sizes=(4, 4), kmeans_iters=1, seed=7)
    codes, _ = quantize(vectors, settings)
    np.testing.assert_array_equal(codes[:, :2], direct(1, 7))
    assert not np.array_equal(direct(1, 7), direct(30, 7)) and not np.array_equal(direct(1, 7), direct(1, 2020))


def test_quantize_reports_rounded_errors_its_time_and_the_collision_code_size() -> None:
    """Three points on a line, levels of one code: the centroid is the middle point, the
    squared errors 1, 0, 1 (mean 2/3, reported to 6 places); all three share the code, so the
    collision code takes 3 values."""
    from recbole_llm.data.semantic_ids import SemanticIdSettings, quantize

    points = np.array([[0, 0], [0, 1], [0, 2]], dtype=np.float32)
    # a second level of one code: the residuals (0, -1), (0, 0), (0, 1) have the centroid 0
    settings = SemanticIdSettings(method="rqkmeans", levels=2, codebook_sizes=(1, 1), normalize=False)
    codes, report = quantize(points, settings)
    assert report["reconstruction_mse"] == 0.666667 and report["random_codes_reconstruction_mse"] == 0.666667
    assert sorted(codes[:, -1].tolist()) == [0, 1, 2] and report["collision_code_size"] == 3
    seconds = report["quantize_seconds"]
    assert isinstance(seconds, float) and 0 <= seconds < 60 and round(seconds, 2) == seconds


def test_quantize_hands_the_rqvae_its_beta_and_weight_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole_llm.data.semantic_ids import SemanticIdSettings, quantize

    seen = {}
    real_init = RQVAE.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen["beta"] = self.beta

    def fit(self, x, epochs, batch_size, lr, seed, optimizer, weight_decay):
        seen["fit"] = (epochs, batch_size, lr, seed, optimizer, weight_decay)
        return [1.0]

    monkeypatch.setattr(RQVAE, "__init__", init)
    monkeypatch.setattr(RQVAE, "fit", fit)
    settings = SemanticIdSettings(method="rqvae", levels=2, codebook_sizes=(4, 4), rqvae_hidden_dims=(8,),
                                  rqvae_latent_dim=4, rqvae_beta=0.7, rqvae_epochs=9, rqvae_batch_size=5,
                                  rqvae_learning_rate=0.02, seed=11, rqvae_optimizer="adagrad",
                                  rqvae_weight_decay=0.003)
    quantize(np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32), settings)
    assert seen == {"beta": 0.7, "fit": (9, 5, 0.02, 11, "adagrad", 0.003)}


def test_rqvae_fit_is_seeded_by_its_own_generator_and_initialises_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit's shuffles and k-means start come from its seed alone (the global RNG does not change
    the result), the codebooks are k-means-initialised by the first fit only, and each epoch takes
    ceil(items / batch) optimizer steps with the given weight decay."""
    import recbole_llm.model.quantizers as quantizers

    x = torch.from_numpy(np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32))

    def fresh() -> RQVAE:
        torch.manual_seed(0)
        return RQVAE(6, levels=2, codebook_size=4, hidden_dims=(8,), latent_dim=3)

    runs = []
    for global_seed in (1, 2):
        model = fresh()
        torch.manual_seed(global_seed)
        runs.append((model.fit(x, epochs=2, batch_size=8, lr=0.01, seed=5), model.codes(x)))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])

    model = fresh()
    before = [p.detach().clone() for p in model.parameters()]
    model.fit(x, epochs=0, batch_size=8, seed=5)                    # initialisation only
    initialised = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before, initialised))
    model.fit(x, epochs=0, batch_size=8, seed=6)                    # no second initialisation
    assert all(torch.equal(a, b.detach()) for a, b in zip(initialised, model.parameters()))

    made, steps = [], []
    real = quantizers.make_optimizer

    def counting(name, parameters, lr, weight_decay=0.0):
        optimizer = real(name, parameters, lr, weight_decay)
        made.append(weight_decay)
        optimizer.register_step_post_hook(lambda *_: steps.append(1))
        return optimizer

    monkeypatch.setattr(quantizers, "make_optimizer", counting)
    fresh().fit(x, epochs=3, batch_size=10, lr=0.01, seed=5, weight_decay=0.02)
    assert made == [0.02] and len(steps) == 3 * 2                     # ceil(16 / 10) = 2 steps an epoch


def test_kmeans_plus_plus_draws_each_seed_by_squared_distance_to_the_nearest_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """k-means++: after the first seed, each next one is drawn with weights equal to every point's
    squared distance to its nearest seed so far (small coordinates, so the weights sum below 1);
    with fewer distinct points than k, every point is equally likely."""
    import recbole_llm.model.quantizers as quantizers

    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.3], [0.4, 0.4], [0.2, 0.1]])
    drawn = []
    real = torch.multinomial

    def spy(weights, n, generator=None):
        drawn.append(weights.clone())
        return real(weights, n, generator=generator)

    monkeypatch.setattr(quantizers.torch, "multinomial", spy)
    centroids, _ = kmeans(x, 3, 0, torch.Generator().manual_seed(0))
    seeds = [centroids[0]]
    for weights, chosen in zip(drawn, centroids[1:]):
        nearest = torch.stack([((x - s) ** 2).sum(1) for s in seeds]).min(0).values
        torch.testing.assert_close(weights, nearest)
        seeds.append(chosen)
    assert len(drawn) == 2 and float(drawn[0].sum()) < 1
    drawn.clear()
    kmeans(torch.ones(4, 2), 3, 0, torch.Generator().manual_seed(0))  # one distinct point, 3 codes
    assert all(torch.equal(w, torch.ones(4)) for w in drawn) and len(drawn) == 2


def test_rqvae_fit_reports_each_epochs_mean_loss_over_the_items() -> None:
    """The loss is a mean of per-item terms, so an epoch's reported loss (batch losses weighted by
    their sizes over the items) at a zero learning rate is the loss of all items at once, whatever
    the batches."""
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(16, 6)).astype(np.float32))
    torch.manual_seed(0)
    model = RQVAE(6, levels=2, codebook_size=4, hidden_dims=(8,), latent_dim=3)
    model.fit(x, epochs=0, batch_size=8, seed=5)                    # k-means initialisation
    with torch.no_grad():
        expected = float(model(x)[2].total)
    history = model.fit(x, epochs=2, batch_size=5, lr=0.0, seed=5, weight_decay=0.0)
    assert history == pytest.approx([expected, expected], rel=1e-5)


def test_semantic_id_settings_read_each_key_with_its_default_and_refuse_bad_values() -> None:
    """``SemanticIdSettings.from_config`` on its own: every key's default when unset, every key read
    when set (0 kept where 0 is meaningful), and each bad value refused with its own message."""
    from recbole_llm.data.semantic_ids import SemanticIdSettings
    from recbole_llm.errors import UserError

    unset = SemanticIdSettings.from_config({}, 1682)
    assert unset == SemanticIdSettings(method="rqvae", levels=3, codebook_sizes=(64, 64, 64), seed=2020, normalize=True,
                                       kmeans_iters=100, rqvae_hidden_dims=(512, 256, 128), rqvae_latent_dim=32,
                                       rqvae_beta=0.25, rqvae_epochs=20000, rqvae_batch_size=1024,
                                       rqvae_learning_rate=0.001, rqvae_optimizer="adamw", rqvae_weight_decay=1e-4)
    assert SemanticIdSettings.from_config({"semantic_id_levels": 2}, 100).codebook_sizes == (16, 16)
    assert SemanticIdSettings.from_config({"semantic_id_levels": 1}, 20).codebook_sizes == (8,)  # one level is allowed
    given = {"semantic_id_method": "RQKMeans", "semantic_id_levels": 2, "semantic_id_codebook_size": [8, 4],
             "semantic_id_seed": 7, "semantic_id_normalize": False, "rqkmeans_iters": 5, "rqvae_hidden_dims": [16, 8],
             "rqvae_latent_dim": 4, "rqvae_beta": 0.0, "rqvae_epochs": 3, "rqvae_batch_size": 2,
             "rqvae_learning_rate": 0.4, "rqvae_optimizer": "AdaGrad", "rqvae_weight_decay": 0.0}
    assert SemanticIdSettings.from_config(given, 20) == SemanticIdSettings(
        method="rqkmeans", levels=2, codebook_sizes=(8, 4), seed=7, normalize=False, kmeans_iters=5,
        rqvae_hidden_dims=(16, 8), rqvae_latent_dim=4, rqvae_beta=0.0, rqvae_epochs=3, rqvae_batch_size=2,
        rqvae_learning_rate=0.4, rqvae_optimizer="adagrad", rqvae_weight_decay=0.0)
    assert SemanticIdSettings.from_config({"semantic_id_codebook_size": 8, "semantic_id_levels": 4}, 20).codebook_sizes == (8,) * 4
    assert SemanticIdSettings.from_config({"semantic_id_codebook_size": 20}, 20).codebook_sizes == (20,) * 3  # = n_items
    assert SemanticIdSettings.from_config({"semantic_id_codebook_size": [2, 2, 2]}, 20).codebook_sizes == (2, 2, 2)
    bad = [
        ({"semantic_id_method": "kmeans"}, "semantic_id_method='kmeans': expected one of rqkmeans, rqvae"),
        ({"semantic_id_levels": 0}, None),  # 0 is unset: the default 3
        ({"semantic_id_levels": -1}, "semantic_id_levels=-1: expected a positive integer (the paper uses 3)"),
        ({"semantic_id_levels": 2.0}, "semantic_id_levels=2.0: expected a positive integer"),
        ({"semantic_id_levels": True}, "semantic_id_levels=True: expected a positive integer"),
        ({"semantic_id_codebook_size": [8, 8]}, "semantic_id_codebook_size=[8, 8]: expected an integer >= 2 or a "
                                               "list of 3 such integers (one per level)"),
        ({"semantic_id_codebook_size": 1}, "semantic_id_codebook_size=1: expected an integer >= 2"),
        ({"semantic_id_codebook_size": [8, 8, 1]}, "semantic_id_codebook_size=[8, 8, 1]: expected"),
        ({"semantic_id_codebook_size": [8, True, 8]}, "semantic_id_codebook_size=[8, True, 8]: expected"),
        ({"semantic_id_codebook_size": 8.0}, "semantic_id_codebook_size=8.0: expected"),
        ({"semantic_id_codebook_size": [8, 21, 8]}, "semantic_id_codebook_size=[8, 21, 8] is larger than the 20 items "
                                                   "to quantize; expected at most 20 codes per level (~ picks 8 for this "
                                                   "catalogue)"),
        ({"rqvae_optimizer": "sgd"}, "rqvae_optimizer='sgd': expected one of adamw, adam, adagrad"),
    ]
    for change, message in bad:
        if message is None:
            assert SemanticIdSettings.from_config(change, 20).levels == 3
            continue
        with pytest.raises(UserError) as caught:
            SemanticIdSettings.from_config(change, 20)
        assert str(caught.value).startswith(message), (change, str(caught.value))


def test_rqvae_encoder_and_decoder_are_relu_mlps_with_a_linear_output() -> None:
    """The paper's encoder (input -> hidden layers -> latent) and its mirror as decoder: a ReLU after
    every hidden layer and none on the latent or the reconstruction, written out layer by layer."""
    torch.manual_seed(3)
    model = RQVAE(6, levels=1, codebook_size=2, hidden_dims=(5, 4), latent_dim=3)
    x = torch.randn(8, 6)

    def by_hand(layers: list[torch.nn.Linear], h: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(layers):
            h = h @ layer.weight.T + layer.bias
            if i < len(layers) - 1:
                h = torch.clamp(h, min=0.0)
        return h

    encoder = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    decoder = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in encoder] == [(6, 5), (5, 4), (4, 3)]
    assert [(m.in_features, m.out_features) for m in decoder] == [(3, 4), (4, 5), (5, 6)]
    z = model.encoder(x)
    assert (z < 0).any()  # the latent is not clipped
    torch.testing.assert_close(z, by_hand(encoder, x))
    torch.testing.assert_close(model.decoder(z), by_hand(decoder, z))


def test_kmeans_with_more_codes_than_distinct_points_keeps_every_point_on_itself() -> None:
    """Three distinct points (each twice) and k = 4: one code duplicates another and starts empty
    (the last one, after the three distinct seeds); every point still ends on a centroid equal to it."""
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]).repeat(2, 1)
    centroids, assign = kmeans(x, 4, 10, torch.Generator().manual_seed(0))
    assert centroids.shape == (4, 2) and assign.shape == (6,)
    torch.testing.assert_close(centroids[assign], x)


def test_rqvae_defaults_are_the_papers() -> None:
    """Called as a library (RQVAE(d) then fit(x)), the RQ-VAE is the paper's: encoder 512-256-128, a
    32-d latent, 3 levels, beta 0.25, 20k epochs of batches of 1,024; the optimizer is the
    references' AdamW at 1e-3 with weight decay 1e-4 (the paper's Adagrad diverges, quantizers.py)."""
    import inspect

    init = {k: p.default for k, p in inspect.signature(RQVAE.__init__).parameters.items()}
    fit = {k: p.default for k, p in inspect.signature(RQVAE.fit).parameters.items()}
    assert (init["levels"], tuple(init["hidden_dims"]), init["latent_dim"], init["beta"]) == (3, (512, 256, 128), 32, 0.25)
    assert (fit["epochs"], fit["batch_size"], fit["lr"], fit["optimizer"], fit["weight_decay"], fit["seed"]) == \
        (20000, 1024, 1e-3, "adamw", 1e-4, 2020)
