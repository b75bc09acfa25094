"""The command line: a real run, and bad input -> one line, exit code 2, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_llm.cli import main
from tests.conftest import write_amazon_fixture


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script's code path, in a fresh process (as a user runs it)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "recbole_llm.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_run_prints_a_table_and_appends_a_record(tmp_path: Path) -> None:
    result = _cli("run", "-m", "Pop", "-d", "ml-100k", "--epochs", "1", "--quiet", "--threads", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| metric" in result.stdout and "ndcg@20" in result.stdout
    records = (tmp_path / "results" / "runs.jsonl").read_text().splitlines()
    assert len(records) == 1 and '"model": "Pop"' in records[0]
    assert json.loads(records[0])["hardware"]["torch_threads"] == 3  # --threads, whatever the machine's cores


def _broken_dataset(root: Path, kind: str) -> None:
    folder = write_amazon_fixture(root, "broken")
    inter = folder / "broken.inter"
    lines = inter.read_text().splitlines()
    if kind == "value":  # a float column holding text
        lines[3] = lines[3].rsplit("\t", 1)[0] + "\tyesterday"
    elif kind == "header":
        lines[0] = lines[0].replace("rating:float", "rating:number")
    elif kind == "missing":
        inter.unlink()
        return
    inter.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("args, message", [
    (["run", "-m", "NoSuchModel", "-d", "ml-100k"], "unknown model 'NoSuchModel'"),
    (["run", "-m", "BPR", "-d", "no-such-data"], "dataset 'no-such-data' not found"),
    (["run", "-m", "BPR", "-d", "ml-100k", "--set", "learning_rate"], "--set 'learning_rate' is malformed"),
    (["run", "-m", "BPR", "-d", "ml-100k", "--set", "epochs=many"], "--set epochs='many': expected a value of type int"),
    (["run", "-m", "BPR", "-d", "ml-100k", "--set", "learnin_rate=0.1"], "Did you mean learning_rate"),
    (["run", "-m", "SASRec", "-d", "ml-100k", "--set", "MAX_ITEM_LIST_LENGTH=-3"],
     "--set MAX_ITEM_LIST_LENGTH=-3: expected a whole number of at least 1"),
    (["run", "-m", "BPR", "-d", "ml-100k", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["run", "-m", "BPR", "-d", "ml-100k", "--device", "tpu"], "--device tpu: expected cpu, cuda"),
    (["run", "-m", "BPR", "-d", "ml-100k", "--threads", "0"], "--threads 0: expected a whole number of at least 1"),
    (["run", "-m", "BPR", "-d", "broken", "--data-path", "data"], "header column 'rating:number' is malformed"),
    (["run", "-m", "BPR", "-d", "broken", "--data-path", "data"], "not found: expected"),
    (["run", "-m", "BPR", "-d", "broken", "--data-path", "data", "--epochs", "1"], "could not load dataset 'broken'"),
    (["resume", "no-such-run"], "run folder no-such-run does not exist"),
    (["resume", "."], "holds no unfinished run"),
], ids=["model", "dataset", "set-syntax", "set-type", "set-key", "set-count", "config-file", "device", "threads", "header", "missing", "value",
        "resume-missing", "resume-finished"])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture, session_home: Path) -> None:
    if "broken" in args:
        kind = {"header": "header", "not found": "missing", "could not": "value"}
        _broken_dataset(tmp_path / "data", next(v for k, v in kind.items() if k in message))
    runs_before = set((session_home / "runs").glob("*")) if (session_home / "runs").exists() else set()
    assert main([*args, "--quiet"] if args[0] == "run" else args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("recbole-llm: error: ")
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()  # no record, not even an empty file
    runs_after = set((session_home / "runs").glob("*")) if (session_home / "runs").exists() else set()
    assert runs_after == runs_before  # no run folder left behind


def test_help_teaches() -> None:
    result = subprocess.run([sys.executable, "-m", "recbole_llm.cli", "run", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--set KEY=VALUE" in result.stdout
    assert "recbole-llm resume" in result.stdout  # how to continue a stopped run


def _own_dataset(root: Path) -> Path:
    """A dataset of one's own, no YAML, its text columns named unlike ml-100k's (and an image URL)."""
    folder = write_amazon_fixture(root, "shop")
    rows = (folder / "shop.item").read_text().splitlines()[1:]
    lines = ["item_id:token\tname:token_seq\tgenre:token_seq\tprice:float\timage_url:token"]
    lines += [f"{r.split(chr(9))[0]}\tProduct {i} lotion\tBeauty Skin\t{i}.5\thttp://x/{i}.jpg" for i, r in enumerate(rows)]
    (folder / "shop.item").write_text("\n".join(lines) + "\n")
    return folder


def test_own_dataset_needs_no_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The plain command works on a dataset of one's own: the item title (AlphaRec's input) and the
    item text are taken from the .item file's columns (named in the feature file's metadata);
    --set item_text_template chooses."""
    import json

    folder = _own_dataset(tmp_path / "data")
    common = ["run", "-m", "AlphaRec", "-d", "shop", "--data-path", str(tmp_path / "data"), "--epochs", "1", "--no-record"]
    assert main([*common, "--quiet"]) == 0
    assert json.loads((folder / "shop.item_minilm_title.json").read_text())["template"] == "{name}"
    assert main([*common, "--quiet", "--set", "item_text=full"]) == 0
    meta = json.loads((folder / "shop.item_minilm.json").read_text())
    assert meta["template"] == "Name: {name}. Genre: {genre}. [lists: genre]"  # no price, no URL

    assert main([*common, "--quiet", "--set", "item_text=full", "--set", 'item_text_template=["Product: {name}."]',
                 "--set", "item_text_list_fields=[]"]) == 0
    assert json.loads((folder / "shop.item_minilm.json").read_text())["template"] == "Product: {name}."
    capsys.readouterr()
    assert main(["encode", "-d", "shop", "--data-path", str(tmp_path / "data"), "--show", "1"]) == 0
    assert "Name: Product 0 lotion. Genre: Beauty, Skin." in capsys.readouterr().out
