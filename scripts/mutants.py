"""Targeted mutants: each seeded error must make the named tests fail.

Groups: ``alpharec`` (AlphaRec's math: propagation, InfoNCE, normalised graph, projector width and
structure, cosine scores, the intention blend, the user mean, title-only text), ``simgcl`` (its
noise, views and contrastive loss) and ``entry-points``
(RecBole's doors after ``import recbole_llm``: the Config hook, the split seed, your own feature
files, profile generation and its estimate, progress bars). Run from the repository root:

    .venv/bin/python scripts/mutants.py [alpharec|simgcl|entry-points]   # about 8, 2 and 6 min on 2 cores

These are hand-picked mutants whose tests are whole runs (RecBole's doors) or that read across
files. The exhaustive mutation test of the models' math is mutmut's (setup.cfg [mutmut]: its
workers come from a fork server, as forked workers hang once torch is imported); see docs/development.md. Here each mutant is applied in turn and the source restored after each.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALPHAREC_TESTS = ["tests/test_alpharec.py"]
SIMGCL_TESTS = ["tests/test_rlmrec.py::test_simgcl_noise_and_contrastive_loss_from_their_definitions",
                "tests/test_rlmrec.py::test_simgcl_trains_and_its_loss_decreases"]
MUTANTS = {
    "alpharec": [
        ("recbole_llm/model/layers.py", "return torch.stack(layers, dim=1).mean(dim=1)", "return torch.stack(layers, dim=1).sum(dim=1)", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "layers.append(torch.sparse.mm(adjacency, layers[-1]))", "layers.append(torch.sparse.mm(adjacency, layers[0]))", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "logits = torch.cat([pos, neg], dim=1) / tau", "logits = torch.cat([pos, neg], dim=1) * tau", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()  # stable form of the ratio", "return (torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]).mean()", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5", "inv_sqrt[degree > 0] = degree[degree > 0] ** -1.0", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "REFERENCE_FIRST_LAYER_WEIGHTS = 4096 * 1152", "REFERENCE_FIRST_LAYER_WEIGHTS = 4096 * 1024", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "super().__init__(nn.Linear(d_in, d_hidden), nn.LeakyReLU(), nn.Linear(d_hidden, d_out))", "super().__init__(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "return F.normalize(a, dim=-1)", "return a", ALPHAREC_TESTS),
        ("recbole_llm/model/layers.py", "return sampled_info_nce(cosine(user_all[users]), cosine(item_all), positives, negatives, self.tau)", "return sampled_info_nce(user_all[users], item_all, positives, negatives, self.tau)", ALPHAREC_TESTS),
        ("recbole_llm/model/alpharec.py", "blended = (1.0 - alpha) * cosine(user_all[users]) + alpha * cosine(intent)", "blended = (1.0 - alpha) * user_all[users] + alpha * intent", ALPHAREC_TESTS),
        ("recbole_llm/model/alpharec.py", "blended = (1.0 - alpha) * cosine(user_all[users]) + alpha * cosine(intent)", "blended = alpha * cosine(user_all[users]) + (1.0 - alpha) * cosine(intent)", ALPHAREC_TESTS),
        ("recbole_llm/model/alpharec.py", "return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)", "return sums.astype(np.float32)", ALPHAREC_TESTS),
        ("recbole_llm/model/alpharec.py", "return (users[interaction[self.USER_ID]] @ items.T).view(-1)", "return (users[interaction[self.USER_ID]] @ items.T).view(-1) * 2 + 1", ALPHAREC_TESTS),
        ("recbole_llm/model/alpharec.py", 'if (config.get("item_text") or "full") != "title":', 'if False:', ALPHAREC_TESTS),
        ("recbole_llm/data/features.py", 'template = (title_template if text == "title" else template_for)(folder, dataset, config_dict)', 'template = template_for(folder, dataset, config_dict)', ALPHAREC_TESTS),

    ],
    "simgcl": [
        ("recbole_llm/model/simgcl.py", "embeddings = embeddings + torch.sign(embeddings) * noise * self.eps", "embeddings = embeddings + noise * self.eps", SIMGCL_TESTS),
        ("recbole_llm/model/simgcl.py", "users, items = torch.unique(users), torch.unique(items)", "pass", SIMGCL_TESTS),
        ("recbole_llm/model/simgcl.py", "noise = F.normalize(torch.rand_like(embeddings), dim=-1)", "noise = torch.rand_like(embeddings)", SIMGCL_TESTS),
        ("recbole_llm/model/layers.py", "a = F.normalize(anchors, dim=-1) / tau  # scale the [B, d] side, not the [B, M] scores", "a = F.normalize(anchors, dim=-1) * tau", SIMGCL_TESTS),
        ("recbole_llm/model/simgcl.py", "user_2, item_2 = self.forward(perturbed=True)", "user_2, item_2 = user_1, item_1", SIMGCL_TESTS),
    ],
    "entry-points": [
        ("recbole_llm/hooks.py", "        if config[\"split_seed\"] is not None:  # a recbole-llm config: the split has its own seed\n            init_seed(config[\"split_seed\"], config[\"reproducibility\"])\n", "        pass\n",
         ["tests/test_recbole_doors.py::test_run_recbole_equals_recbole_llm_run_on_the_embedded_dataset[AlphaRec]"]),
        ("recbole_llm/hooks.py", "        if plugin_entry(name) is not None:", "        if False:",
         ["tests/test_recbole_doors.py::test_run_recbole_then_load_data_and_model[AlphaRec]"]),
        ("recbole_llm/hooks.py", "    folder = resolve_dataset(dataset, external.get(\"data_path\"))", "    folder = resolve_dataset(dataset, None)",
         ["tests/test_recbole_doors.py::test_run_recbole_then_load_data_and_model[AlphaRec]"]),
        ("recbole_llm/data/features.py", "        if kind in named or kind in built:", "        if kind in built:",
         ["tests/test_recbole_doors.py::test_a_config_that_names_its_own_feature_file_uses_it"]),
        ("recbole_llm/data/features.py", "        config_dict = {**config_dict, \"load_col\": {**load_col, **{suffix: \"*\" for suffix in extra}}}", "        pass",
         ["tests/test_recbole_doors.py::test_a_config_that_names_its_own_feature_file_uses_it"]),
        ("recbole_llm/data/features.py", "    missing = np.where(~matrix[1:].any(axis=1))[0] + 1", "    missing = np.where(~matrix[1:].any(axis=1))[0][:0]",
         ["tests/test_recbole_doors.py::test_bad_llm_inputs_through_recboles_door"]),
        ("recbole_llm/llm/profiles.py", "        if not generate:", "        if False:",
         ["tests/test_recbole_doors.py::test_missing_profiles_are_generated_or_explained"]),
        ("recbole_llm/llm/profiles.py", "    scale = settings.max_new_tokens / 96", "    scale = settings.max_new_tokens / 48",
         ["tests/test_recbole_doors.py::test_missing_profiles_are_generated_or_explained"]),
        ("recbole_llm/config.py", "        config[\"show_progress\"] = shown()", "        config[\"show_progress\"] = True",
         ["tests/test_run.py::test_batch_progress_bars_on_a_terminal_only"]),
        ("recbole_llm/runner.py", "    recbole_trainer.tqdm = functools.partial(original, leave=False)", "    pass",
         ["tests/test_run.py::test_batch_progress_bars_on_a_terminal_only"]),
    ],
}


def main() -> int:
    groups = sys.argv[1:] or list(MUTANTS)
    killed = total = 0
    for group in groups:
        for path, old, new, tests in MUTANTS[group]:
            file = ROOT / path
            original = file.read_text()
            assert original.count(old) == 1, (path, old)
            file.write_text(original.replace(old, new))
            try:
                result = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pytest", "-q", "-x", "-p",
                                         "no:cacheprovider", *tests], cwd=ROOT, capture_output=True, text=True,
                                        timeout=900)
            finally:
                file.write_text(original)
            total += 1
            killed += result.returncode != 0
            print(f"{'killed' if result.returncode else 'SURVIVED':8s} [{group}] {path}: {new.strip()[:80]}", flush=True)
    print(f"{killed}/{total} killed")
    return 0 if killed == total else 1


if __name__ == "__main__":
    sys.exit(main())
