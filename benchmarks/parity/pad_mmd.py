"""PAD's multi-kernel MMD (``recbole_llm.model.pad.mk_mmd``) against the one the official PAD code
imports: tllib's ``MultipleKernelMaximumMeanDiscrepancy`` with ``GaussianKernel(alpha=2 ** k)``,
k = -3..1 (model/model_mmd_ada.py), read from a checkout of thuml/Transfer-Learning-Library whose
path you give (its two files are loaded on their own; nothing is installed or vendored).

    python benchmarks/parity/pad_mmd.py --tllib ~/src/Transfer-Learning-Library [--cases 30]

Prints the largest relative difference of the value and the largest absolute difference of the
gradient over random cases of several sizes, scales and shifts.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch


def load_tllib(root: Path) -> type:
    """tllib's kernels.py and dan.py as modules, without importing the rest of tllib."""
    package = types.ModuleType("tllib")
    package.__path__ = []  # a namespace for the two modules only
    sys.modules.setdefault("tllib", package)
    classifier = types.ModuleType("tllib.modules.classifier")
    classifier.Classifier = object  # dan.py's DAN classifier head is not used here
    sys.modules["tllib.modules.classifier"] = classifier
    modules = {}
    for name, path in (("kernels", "tllib/modules/kernels.py"), ("dan", "tllib/alignment/dan.py")):
        file = root / path
        if not file.is_file():
            raise SystemExit(f"--tllib {root}: {path} not found; expected a checkout of thuml/Transfer-Learning-Library")
        spec = importlib.util.spec_from_file_location(f"tllib_{name}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    kernels = [modules["kernels"].GaussianKernel(alpha=2 ** k) for k in range(-3, 2)]
    return modules["dan"].MultipleKernelMaximumMeanDiscrepancy(kernels=kernels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tllib", type=Path, required=True, help="a checkout of github.com/thuml/Transfer-Learning-Library")
    parser.add_argument("--cases", type=int, default=30)
    args = parser.parse_args()
    from recbole_llm.model.pad import mk_mmd

    reference = load_tllib(args.tllib.expanduser())
    worst_value, worst_grad = 0.0, 0.0
    for case in range(args.cases):
        torch.manual_seed(case)
        n = (4, 16, 64, 336)[case % 4]                      # 336 = PAD's rows of 8 users x 21 positions x 2
        source = torch.randn(n, 32) * (1 + case % 3)
        target = torch.randn(n, 32) + 0.5 * (case % 5)
        a, b = source.clone().requires_grad_(True), source.clone().requires_grad_(True)
        theirs, ours = reference(a, target), mk_mmd(b, target)
        theirs.backward()
        ours.backward()
        worst_value = max(worst_value, abs(theirs.item() - ours.item()) / max(abs(theirs.item()), 1e-12))
        worst_grad = max(worst_grad, float((a.grad - b.grad).abs().max()))
    print(f"{args.cases} cases (n in 4, 16, 64, 336; d = 32): largest relative difference of the MMD "
          f"{worst_value:.2e}, largest absolute difference of its gradient {worst_grad:.2e}")


if __name__ == "__main__":
    main()
