"""Item text rendered from the dataset's text columns, e.g.
``Title: Toy Story. Year: 1995. Genres: Animation, Children's, Comedy.`` for ml-100k.

A template is a list of segments (or one string); each segment names fields as ``{field}`` and
is left out when any of its fields is empty, so an empty cell never prints as ``nan`` or ``Year: .``.
Fields listed in ``list_fields`` hold several values (RecBole token_seq cells such as
``Animation Children's Comedy``, or Amazon's ``'Beauty', 'Skin Care'``) and are joined with ", ".
"""
from __future__ import annotations

import csv
import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from recbole_llm.errors import UserError

_PLACEHOLDER = string.Formatter()


@dataclass(frozen=True)
class TextTemplate:
    segments: tuple[str, ...]
    list_fields: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, template: str | Iterable[str], list_fields: Iterable[str] = ()) -> "TextTemplate":
        segments = (template,) if isinstance(template, str) else tuple(template)
        if not segments or not all(isinstance(s, str) and s for s in segments):
            raise UserError(f"item text template {template!r} is empty; expected text with {{field}} placeholders")
        return cls(segments, tuple(list_fields))

    @property
    def fields(self) -> list[str]:
        out: list[str] = []
        for segment in self.segments:
            for _, name, _, _ in _PLACEHOLDER.parse(segment):
                if name and name not in out:
                    out.append(name)
        return out

    def describe(self) -> str:
        """A stable text form of the template, for metadata and cache keys."""
        return " ".join(self.segments) + (f" [lists: {', '.join(self.list_fields)}]" if self.list_fields else "")

    def render(self, row: dict[str, str]) -> str:
        values = {name: _clean(row.get(name, ""), name in self.list_fields) for name in self.fields}
        parts = []
        for segment in self.segments:
            names = [name for _, name, _, _ in _PLACEHOLDER.parse(segment) if name]
            if all(values[name] for name in names):
                parts.append(segment.format(**values))
        return " ".join(parts)


def _clean(raw: str, is_list: bool) -> str:
    value = (raw or "").strip()
    if value.lower() in ("nan", "none", "null"):
        return ""
    if not is_list:
        return value
    # Amazon: "'Beauty', 'Skin Care'"; RecBole token_seq: space-separated tokens.
    items = value.split(",") if "," in value else value.split()
    items = [item.strip().strip("'\"[]").strip() for item in items]
    return ", ".join(item for item in items if item)


def read_item_table(folder: Path, dataset: str, fields: Iterable[str]) -> dict[str, dict[str, str]]:
    """item token -> {field: raw cell} from ``<dataset>.item``; UserError naming missing columns."""
    path = folder / f"{dataset}.item"
    if not path.is_file():
        raise UserError(f"{path} is missing; item text needs the .item atomic file with the text columns")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        names = [column.split(":")[0] for column in header]
        wanted = list(fields)
        missing = [name for name in wanted if name not in names]
        if missing:
            raise UserError(
                f"{path} has no column {', '.join(missing)}; expected the text columns "
                f"{', '.join(wanted)} (set item_text_template, and item_text_list_fields, for this dataset); "
                f"its columns are {', '.join(names)}"
            )
        id_column = 0 if names and names[0] else None
        for i, name in enumerate(names):
            if re.fullmatch(r"item_id|iid", name):
                id_column = i
                break
        if id_column is None:
            raise UserError(f"{path} has no item_id column; expected 'item_id:token' in its header")
        index = {name: names.index(name) for name in wanted}
        table = {}
        for row in reader:
            if not row:
                continue
            table[row[id_column]] = {name: (row[i] if i < len(row) else "") for name, i in index.items()}
    return table


def item_texts(folder: Path, dataset: str, template: TextTemplate) -> dict[str, str]:
    """item token -> rendered text, in the .item file's order."""
    table = read_item_table(folder, dataset, template.fields)
    return {item: template.render(row) for item, row in table.items()}


def texts_hash(texts: dict[str, str]) -> str:
    """A fingerprint of (id, text) pairs: changes when any item or text changes."""
    digest = hashlib.sha256()
    for key in sorted(texts):
        digest.update(key.encode())
        digest.update(b"\t")
        digest.update(texts[key].encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# Columns of a .item file that hold text an LLM can read: tokens and token sequences (numbers of
# type float are prices, ranks ... and ids are not text). Names that say "several categories"
# are joined as lists; any other token_seq (e.g. ml-100k's movie_title) is words of one text.
_LIST_NAME = re.compile(r"(genre|class|categor|tag|keyword|label|topic)", re.I)
_NOT_TEXT_NAME = re.compile(r"(^|_)(id|iid|uid|url|image|img|link|path)($|_|s$)", re.I)


def infer_template(folder: Path, dataset: str) -> TextTemplate:
    """A default item text template from the text columns of ``<dataset>.item``: one segment
    ``Column name: {column}.`` per token / token_seq column that is not an id, URL or path.
    UserError when there is no .item file or no such column."""
    path = folder / f"{dataset}.item"
    if not path.is_file():
        raise UserError(f"{path} is missing; item text needs the .item atomic file with text columns "
                        "(e.g. title:token_seq), or set item_text_template")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    columns = [tuple(column.split(":", 1)) for column in header if ":" in column]
    text_columns = [name for name, ftype in columns
                    if ftype in ("token", "token_seq") and not _NOT_TEXT_NAME.search(name)]
    if not text_columns:
        raise UserError(f"{path} has no text column (its columns are {', '.join(header)}); expected a "
                        "token or token_seq column such as title:token_seq, or set item_text_template")
    segments = tuple(f"{name.replace('_', ' ').strip().capitalize()}: {{{name}}}." for name in text_columns)
    lists = tuple(name for name, ftype in columns if name in text_columns and ftype == "token_seq"
                  and _LIST_NAME.search(name))
    return TextTemplate(segments, lists)


_TITLE_NAME = re.compile(r"(title|name)", re.I)


def title_template(folder: Path, dataset: str, config: dict) -> TextTemplate:
    """The item's title alone: ``item_title_template`` from the config, else the first text column
    of the .item file named like a title or name; UserError when there is none."""
    if config.get("item_title_template"):
        return TextTemplate.from_config(config["item_title_template"])
    inferred = infer_template(folder, dataset)
    for field in inferred.fields:
        if _TITLE_NAME.search(field):
            return TextTemplate((f"{{{field}}}",))
    raise UserError(f"{folder / (dataset + '.item')} has no title column ({', '.join(inferred.fields)}); expected "
                    "item_title_template naming it, e.g. ['{name}'], or item_text: full (the whole item text, a variant)")


def template_for(folder: Path, dataset: str, config: dict) -> TextTemplate:
    """The item text template of a run or command: ``item_text_template`` from its config, else
    the template inferred from the .item columns (logged, so the user sees what the LLM reads)."""
    if config.get("item_text_template"):
        return TextTemplate.from_config(config["item_text_template"], config.get("item_text_list_fields") or ())
    template = infer_template(folder, dataset)
    import logging

    logging.getLogger("recbole_llm").info(
        "dataset '%s' has no item_text_template: item text is rendered from its .item columns as %s "
        "(set item_text_template to choose)", dataset, template.describe())
    return template
