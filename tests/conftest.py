"""Shared fixtures. Every test works in temporary folders: the toolkit's home (data root, run
folders) and the current directory (so a default results/ path lands there too)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

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


def split_for(model: str, dataset_name: str, root: Path, overrides: dict) -> tuple:
    """What `run` builds before training, without training: (model class, RecBole Config, dataset,
    (train, valid, test) loaders), split by ``split_seed`` and the global seed then set to ``seed``."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_llm.runner import prepare, recbole_argv

    model_class, config_dict = prepare(model, dataset_name, data_path=root, overrides=overrides)
    with recbole_argv():
        config = Config(model=model_class, dataset=dataset_name, config_dict=config_dict)
    init_seed(config["split_seed"], True)
    dataset = create_dataset(config)
    loaders = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return model_class, config, dataset, loaders


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


CTR_YAML = """USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
TIME_FIELD: timestamp
user_inter_num_interval: "[5,inf)"
item_inter_num_interval: "[5,inf)"
item_text_template: ["Title: {title}.", "Brand: {brand}."]
protocols:
  ctr:
    load_col:
      inter: [user_id, item_id, rating, timestamp]
      item: [item_id, categories, brand]
    threshold: {rating: 3}
    eval_args: {split: {RS: [0.6, 0.2, 0.2]}, order: TO, group_by: user, mode: labeled}
    metrics: [AUC, LogLoss]
    valid_metric: AUC
    MAX_ITEM_LIST_LENGTH: 5
  sequential:
    load_col:
      inter: [user_id, item_id, timestamp]
    eval_args: {split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}
    metrics: [Hit, NDCG]
    topk: [5, 10]
    valid_metric: NDCG@10
    MAX_ITEM_LIST_LENGTH: 5
"""


def write_ctr_fixture(root: Path, name: str = "tiny-ctr") -> Path:
    """The tiny Amazon-format dataset with a YAML of its own giving it a ctr protocol (rating >= 3 a
    click; a 5-impression history for DIN-style models) and a sequential one (leave-one-out, 5 items:
    LLM-CF(SASRec) reads the ranking pool of the same dataset)."""
    folder = write_amazon_fixture(root, name)
    (folder / f"{name}.yaml").write_text(CTR_YAML)
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


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer, 16-wide Llama causal-LM folder with a byte-level tokenizer, standing in for SmolLM2
    (Molar, BAHE): random weights, sharp attention."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<pad>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("lm") / "tiny-llama"
    lm = LlamaForCausalLM(config)
    with torch.no_grad():  # sharp attention: at the default init (std 0.02) it is uniform, blind to masks and positions
        for layer in lm.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_proj.weight, std=1.0)
            torch.nn.init.normal_(layer.self_attn.k_proj.weight, std=1.0)
    lm.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
