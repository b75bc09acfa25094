"""Targeted mutants of AlphaRec's math (propagation, InfoNCE, normalised graph, projector width and
structure, cosine scores, the intention blend, the user mean, title-only text): each must make
tests/test_alpharec.py fail. Run: .venv/bin/python scripts/mutants_alpharec.py (about 8 min on 2 cores).
mutmut 3.8 was tried first: its forked workers hang once torch is imported, so these are applied by hand."""
import subprocess, sys, shutil
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
MUTANTS = [
    ("recbole_llm/model/layers.py", "return torch.stack(layers, dim=1).mean(dim=1)", "return torch.stack(layers, dim=1).sum(dim=1)"),
    ("recbole_llm/model/layers.py", "layers.append(torch.sparse.mm(adjacency, layers[-1]))", "layers.append(torch.sparse.mm(adjacency, layers[0]))"),
    ("recbole_llm/model/layers.py", "logits = torch.cat([pos, neg], dim=1) / tau", "logits = torch.cat([pos, neg], dim=1) * tau"),
    ("recbole_llm/model/layers.py", "return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()  # stable form of the ratio", "return (torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]).mean()"),
    ("recbole_llm/model/layers.py", "inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5", "inv_sqrt[degree > 0] = degree[degree > 0] ** -1.0"),
    ("recbole_llm/model/layers.py", "REFERENCE_FIRST_LAYER_WEIGHTS = 4096 * 1152", "REFERENCE_FIRST_LAYER_WEIGHTS = 4096 * 1024"),
    ("recbole_llm/model/layers.py", "super().__init__(nn.Linear(d_in, d_hidden), nn.LeakyReLU(), nn.Linear(d_hidden, d_out))", "super().__init__(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))"),
    ("recbole_llm/model/layers.py", "return F.normalize(a, dim=-1)", "return a"),
    ("recbole_llm/model/layers.py", "return sampled_info_nce(cosine(user_all[users]), cosine(item_all), positives, negatives, self.tau)", "return sampled_info_nce(user_all[users], item_all, positives, negatives, self.tau)"),
    ("recbole_llm/model/alpharec.py", "blended = (1.0 - alpha) * cosine(user_all[users]) + alpha * cosine(intent)", "blended = (1.0 - alpha) * user_all[users] + alpha * intent"),
    ("recbole_llm/model/alpharec.py", "blended = (1.0 - alpha) * cosine(user_all[users]) + alpha * cosine(intent)", "blended = alpha * cosine(user_all[users]) + (1.0 - alpha) * cosine(intent)"),
    ("recbole_llm/model/alpharec.py", "return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)", "return sums.astype(np.float32)"),
    ("recbole_llm/model/alpharec.py", "return (users[interaction[self.USER_ID]] @ items.T).view(-1)", "return (users[interaction[self.USER_ID]] @ items.T).view(-1) * 2 + 1"),
    ("recbole_llm/model/alpharec.py", 'if (config.get("item_text") or "full") != "title":', 'if False:'),
    ("recbole_llm/data/features.py", 'template = (title_template if text == "title" else template_for)(folder, dataset, config_dict)', 'template = template_for(folder, dataset, config_dict)'),
]
killed = 0
for path, old, new in MUTANTS:
    file = ROOT / path
    original = file.read_text()
    assert original.count(old) == 1, (path, old)
    file.write_text(original.replace(old, new))
    try:
        result = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                 "tests/test_alpharec.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        file.write_text(original)
    status = "killed" if result.returncode != 0 else "SURVIVED"
    killed += result.returncode != 0
    print(f"{status:8s} {path}: {new[:90]}", flush=True)
print(f"{killed}/{len(MUTANTS)} killed")
