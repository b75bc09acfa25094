"""Shared fixtures. Every test works in temporary folders: the toolkit's home (data root, run
folders) and the current directory (so a default results/ path lands there too)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*sparse.*deprecated.*")
warnings.filterwarnings("ignore", message=r".*NumPy array is not writable.*")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("recbole-llm-home")
    os.environ["RECBOLE_LLM_HOME"] = str(home)
    os.environ.pop("RECBOLE_LLM_DATA", None)
    return home


@pytest.fixture(autouse=True)
def _isolated(session_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBOLE_LLM_HOME", str(session_home))
    monkeypatch.chdir(tmp_path)


# A tiny dataset in the Amazon 2014 atomic format (header as RecBole's Amazon_Beauty files):
# 40 users x 30 items, every user with 6 interactions and every item with 8, so 5-core filtering
# keeps everything and full ranking at k=20 is meaningful.
AMAZON_ITEM_HEADER = (
    "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\tprice:float\tbrand:token"
)


def write_amazon_fixture(root: Path, name: str = "amazon-beauty", n_users: int = 40, n_items: int = 30) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(n_users):
        for k in range(6):
            item = (u + 2 * k) % n_items
            lines.append(f"U{u:03d}\tB{item:04d}\t{1 + (u + k) % 5}.0\t{1_300_000_000 + 86_400 * (u * 7 + k)}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    items = [AMAZON_ITEM_HEADER]
    for i in range(n_items):
        brand = "" if i % 3 == 0 else f"Brand{i % 4}"   # empty cells, as in the real files
        price = "" if i % 4 == 0 else f"{5 + i}.99"
        items.append(f"B{i:04d}\tProduct {i} lotion\tBeauty\t{1000 + i}\t'Beauty', 'Skin Care'\t{price}\t{brand}")
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return folder


@pytest.fixture
def amazon_root(tmp_path: Path) -> Path:
    """A data root holding the tiny amazon-beauty fixture."""
    root = tmp_path / "data"
    write_amazon_fixture(root)
    return root


# RecBole rounds metrics to 4 decimals. Two runs with the same split, seed and model can still
# differ by float noise (CPU BLAS kernels may pick a different path by buffer alignment), which
# moves a value across a rounding boundary now and then (seen in CI: MRR@20 0.2151 vs 0.2150).
# Any real difference between two doors (another split, seed, sampler or input) moves the
# metrics by far more than one unit in the last place.
LAST_PLACE = 1e-4 + 1e-9


def assert_same_metrics(theirs: dict, ours: dict) -> None:
    """Equal keys, and equal values up to one unit in RecBole's last reported place."""
    theirs = {k: float(v) for k, v in theirs.items()}
    assert set(theirs) == set(ours)
    assert theirs == pytest.approx(ours, abs=LAST_PLACE, rel=0)
