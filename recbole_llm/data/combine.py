"""Several datasets as one, for co-training a model without ID embeddings on all of them
(AlphaRec's multi-source zero-shot setting: train on several source datasets, then recommend on a
dataset none of them is).

``recbole-llm datasets combine NAME --from A B ...`` writes ``<data root>/NAME/``:
- ``NAME.inter``: every interaction of each source, users and items prefixed with their source
  (``ml-latest-small/31``), so the sources share no user or item;
- ``NAME.item``: per item its ``title`` and its whole ``text``, each rendered with its source's
  own templates (the LLM reads the same text it reads on the source), and its ``source``;
- ``NAME.yaml``: the settings (filters, the general protocol of the first source, the text
  columns, ``negative_groups: source`` so that negatives are drawn within the positive's source,
  as the paper's co-training does).

A k-core filter on a union of datasets that share no user or item keeps exactly each source's
k-core, so the sources' filters are applied by the combined dataset's own (they must agree).
"""
from __future__ import annotations

import os

import yaml

from recbole_llm.data.datasets import data_root, resolve_dataset
from recbole_llm.data.importers import ImportReport, staged_folder, write_atomic_file
from recbole_llm.errors import UserError

SEP = "/"  # between a source's name and its own token: never in a dataset name


def combine_datasets(name: str, sources: list[str], data_path: str | os.PathLike | None = None,
                     force: bool = False) -> ImportReport:
    """Write dataset ``name`` from ``sources`` (each a dataset the toolkit resolves)."""
    import csv

    from recbole_llm.config import dataset_settings
    from recbole_llm.data.text import item_texts, template_for, title_template

    if len(sources) < 2 or len(set(sources)) != len(sources):
        raise UserError(f"--from {' '.join(sources)}: expected two or more different datasets to combine")
    if name in sources or not name or SEP in name or name.startswith("."):
        raise UserError(f"dataset name '{name}' is not valid for a combination; expected a new plain name")
    folder = data_root(data_path) / name
    if (folder / f"{name}.inter").is_file() and not force:
        raise UserError(f"{folder / (name + '.inter')} exists; pass --force to combine over it")
    settings = {source: dataset_settings(source, "general", data_path) for source in sources}
    filters = {(s.get("user_inter_num_interval"), s.get("item_inter_num_interval")) for s in settings.values()}
    if len(filters) > 1:
        raise UserError(f"the sources filter differently ({', '.join(f'{k}: {v[0]} users, {v[1]} items' for k, v in zip(sources, filters))}); "
                        "expected the same user_inter_num_interval and item_inter_num_interval")
    report = ImportReport(name, folder, " + ".join(sources), verb="combined")
    inter: list[list[str]] = [["user_id:token", "item_id:token", "source:token"]]
    items: list[list[str]] = [["item_id:token", "title:token_seq", "text:token_seq", "source:token"]]
    for source in sources:
        source_folder = resolve_dataset(source, data_path)
        config = settings[source]
        with open(source_folder / f"{source}.inter", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            names = [c.split(":")[0] for c in next(reader, [])]
            uid, iid = names.index(config.get("USER_ID_FIELD", "user_id")), names.index(config.get("ITEM_ID_FIELD", "item_id"))
            rows = [[f"{source}{SEP}{row[uid]}", f"{source}{SEP}{row[iid]}", source] for row in reader if len(row) > max(uid, iid)]
        inter += rows
        texts = item_texts(source_folder, source, template_for(source_folder, source, config))
        titles = item_texts(source_folder, source, title_template(source_folder, source, config))
        rated = dict.fromkeys(row[1] for row in rows)
        for token in rated:
            own = token[len(source) + 1:]
            items.append([token, titles.get(own, ""), texts.get(own, ""), source])
        report.notes.append(f"{source}: {len(rows):,} interactions, {len(rated):,} items")
    first = settings[sources[0]]
    combined = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id"], "item": ["item_id", "source"]},
        "user_inter_num_interval": first.get("user_inter_num_interval"),
        "item_inter_num_interval": first.get("item_inter_num_interval"),
        "item_text_template": ["{text}"], "item_title_template": ["{title}"],
        "llm_encode_items": "filtered" if any(s.get("llm_encode_items") == "filtered" for s in settings.values()) else "all",
        "negative_groups": "source",
        "combined_from": list(sources),
        "protocols": {"general": {k: first[k] for k in ("eval_args", "metrics", "topk", "valid_metric") if k in first}},
        "unsupported_protocols": {"sequential": "a combination of datasets has no common time line; use the general protocol"},
    }
    with staged_folder(folder) as staging:
        write_atomic_file(staging / f"{name}.inter", inter)
        write_atomic_file(staging / f"{name}.item", items)
        with open(staging / f"{name}.yaml", "w", encoding="utf-8") as f:
            f.write(f"# Written by `recbole-llm datasets combine {name} --from {' '.join(sources)}`.\n")
            yaml.safe_dump(combined, f, sort_keys=False, allow_unicode=True)
        report.written = {f"{name}.inter": len(inter) - 1, f"{name}.item": len(items) - 1, f"{name}.yaml": 1}
    return report
