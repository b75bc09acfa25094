"""Count baselines of the ctr protocol: score a test impression by its user's click rate in the
training split, its item's, or their sum, and print the test AUC (and GAUC: per-user AUC weighted
by the user's impressions, over users with both labels). The split is the protocol's own (RecBole
builds it, as for every ctr model), so the numbers sit beside the leaderboard's ctr table and say
how much of the AUC is who rates high and what is rated high.

    python benchmarks/ctr_rate_baselines.py [-d ml-100k]
"""
from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", default="ml-100k")
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import roc_auc_score

    import recbole_llm  # noqa: F401  (repairs RecBole first)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_llm.progress import quiet
    from recbole_llm.runner import prepare, recbole_argv

    with quiet(True):
        model_class, config_dict = prepare("DeepFM", args.dataset)  # any ctr model: the protocol's split
        with recbole_argv():
            config = Config(model=model_class, dataset=args.dataset, config_dict=config_dict)
        init_seed(config["split_seed"], True)
        train, _, test = data_preparation(config, create_dataset(config))
    label, uid, iid = config["LABEL_FIELD"], config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]

    def columns(loader) -> tuple:
        inter = loader.dataset.inter_feat
        return inter[uid].numpy(), inter[iid].numpy(), inter[label].numpy().astype(float)

    (tu, ti, ty), (su, si, sy) = columns(train), columns(test)
    overall = ty.mean()

    def rate(ids: np.ndarray, of: np.ndarray) -> np.ndarray:
        clicks, seen = np.bincount(ids, ty, minlength=of.max() + 1), np.bincount(ids, minlength=of.max() + 1)
        return np.where(seen[of] > 0, clicks[of] / np.maximum(seen[of], 1), overall)  # unseen: the mean

    def gauc(scores: np.ndarray) -> float:
        total, weight = 0.0, 0
        for user in np.unique(su):
            rows = su == user
            if 0 < sy[rows].sum() < rows.sum():
                total, weight = total + rows.sum() * roc_auc_score(sy[rows], scores[rows]), weight + rows.sum()
        return total / weight

    user, item = rate(tu, su), rate(ti, si)
    print(f"{args.dataset}, ctr protocol: {len(ty)} training and {len(sy)} test impressions "
          f"({overall:.1%} clicks in training)")
    print("| score | test AUC | test GAUC |\n|---|---|---|")
    for name, scores in (("user's training click rate", user), ("item's training click rate", item),
                         ("sum of both", user + item)):
        print(f"| {name} | {roc_auc_score(sy, scores):.4f} | {gauc(scores):.4f} |")


if __name__ == "__main__":
    main()
