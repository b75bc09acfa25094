"""Where datasets live, how a name becomes a folder of atomic files, and checks of those files.

Resolution of ``-d NAME`` (first hit wins):
1. ``<data root>/NAME/NAME.inter``, where the data root is ``--data-path``, else
   ``$RECBOLE_LLM_DATA``, else ``~/.recbole-llm/data``;
2. ``ml-100k``: the copy shipped inside the recbole wheel, copied into the data root once (so feature
   files can sit beside it; site-packages is never written);
3. a name in RecBole's ``url.yaml``: RecBole's own download (its server must be reachable).
Otherwise one error line says which files to put where.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from recbole_llm.errors import UserError
from recbole_llm.paths import PROPERTIES_DIR

EMBEDDED = "ml-100k"
ATOMIC_SUFFIXES = ("inter", "user", "item", "kg", "link", "net")
FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
DOWNLOAD_TIMEOUT_S = 15


def home() -> Path:
    """The toolkit's working folder (data, run folders): $RECBOLE_LLM_HOME or ~/.recbole-llm."""
    return Path(os.environ.get("RECBOLE_LLM_HOME", Path.home() / ".recbole-llm")).expanduser()


def data_root(data_path: str | os.PathLike | None = None) -> Path:
    """The folder holding one sub-folder per dataset."""
    if data_path:
        return Path(data_path).expanduser().resolve()
    env = os.environ.get("RECBOLE_LLM_DATA")
    return Path(env).expanduser().resolve() if env else (home() / "data").resolve()


def _recbole_package_dir() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent


def embedded_copy() -> Path:
    """ml-100k as shipped inside the recbole wheel (read only)."""
    return _recbole_package_dir() / "dataset_example" / EMBEDDED


def download_urls() -> dict[str, str]:
    """RecBole's table of downloadable dataset names -> URLs."""
    with open(_recbole_package_dir() / "properties" / "dataset" / "url.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def dataset_properties_file(name: str, data_path: str | os.PathLike | None = None) -> Path | None:
    """The YAML that defines dataset NAME: ``<data root>/NAME/NAME.yaml`` beside its atomic files
    (a dataset's own settings, e.g. one written by ``datasets combine``), else this toolkit's
    properties/dataset/NAME.yaml; None if neither exists."""
    if name and "/" not in name:
        beside = data_root(data_path) / name / f"{name}.yaml"
        if beside.is_file():
            return beside
    path = PROPERTIES_DIR / "dataset" / f"{name}.yaml"
    return path if path.is_file() else None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    present: bool
    path: Path
    source: str  # "embedded", "local", "downloadable", "importable", "missing"
    configured: bool  # has a properties/dataset YAML of this toolkit


def _atomic_present(folder: Path, name: str) -> bool:
    return (folder / f"{name}.inter").is_file()


def check_atomic_headers(folder: Path, name: str) -> None:
    """Fail with one line if an atomic file's header is not ``field:type`` with a RecBole type."""
    for suffix in ATOMIC_SUFFIXES:
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
        if not header:
            raise UserError(f"{path} is empty; expected a header line like 'user_id:token\\titem_id:token'")
        for column in header.split("\t"):
            field, sep, ftype = column.partition(":")
            if not sep or not field or ftype not in FEATURE_TYPES:
                raise UserError(
                    f"{path}: header column '{column}' is malformed; expected 'name:type' with type "
                    f"one of {', '.join(FEATURE_TYPES)}, columns separated by tabs"
                )
    if not (folder / f"{name}.inter").is_file():
        raise UserError(f"{folder / (name + '.inter')} is missing; expected the interaction atomic file")


def _copy_embedded(target: Path) -> None:
    """Copy the wheel's ml-100k into the data root, atomically (temp folder, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED}-", dir=target.parent))
    try:
        for path in embedded_copy().iterdir():
            shutil.copy2(path, tmp / path.name)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _atomic_present(target, EMBEDDED):  # lost a race with another process: fine
            raise


def _download(name: str, url: str, target: Path) -> None:
    """RecBole's own download + unzip + rename, into a temp folder that is renamed when complete."""
    from recbole.utils.url import download_url, extract_zip, rename_atomic_files

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # RecBole's urlopen has none: do not hang
    try:
        path = download_url(url, str(tmp))
        extract_zip(path, str(tmp))
        os.unlink(path)
        rename_atomic_files(str(tmp), os.path.splitext(os.path.basename(path))[0], name)
        os.replace(tmp, target)
    finally:
        socket.setdefaulttimeout(previous)
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_dataset(name: str, data_path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder of dataset NAME, copying or downloading it when needed; UserError if impossible."""
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"dataset name '{name}' is not valid; expected a plain name such as ml-100k")
    root = data_root(data_path)
    folder = root / name
    if not _atomic_present(folder, name):
        if name == EMBEDDED:
            _copy_embedded(folder)
        elif download and name in download_urls():
            try:
                _download(name, download_urls()[name], folder)
            except Exception as exc:  # network errors come in many types
                raise UserError(
                    f"dataset '{name}' is not under {folder} and RecBole's download failed "
                    f"({type(exc).__name__}: {exc}); put {name}.inter (and {name}.item / {name}.user) "
                    f"in {folder}/ or pass --data-path to the folder that holds {name}/"
                ) from None
        else:
            from recbole_llm.data.importers import IMPORTERS

            if name in IMPORTERS:
                raise UserError(f"dataset '{name}' is not under {folder}; import it from its original files: "
                                f"recbole-llm datasets import {name} --from PATH (see --help there)")
            hint = " (a name RecBole can download)" if name in download_urls() else ""
            raise UserError(
                f"dataset '{name}'{hint} not found: expected {folder / (name + '.inter')} "
                f"(plus optional {name}.item / {name}.user); put the atomic files there or pass "
                f"--data-path to the folder that holds {name}/"
            )
    check_atomic_headers(folder, name)
    return folder


def list_datasets(data_path: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """Known names: configured ones, present ones and RecBole's downloadable ones."""
    from recbole_llm.data.importers import IMPORTERS

    root = data_root(data_path)
    names = {EMBEDDED, *IMPORTERS}
    names |= {p.stem for p in (PROPERTIES_DIR / "dataset").glob("*.yaml")}
    if root.is_dir():
        names |= {p.name for p in root.iterdir() if p.is_dir() and _atomic_present(p, p.name)}
    urls = download_urls()
    infos = []
    for name in sorted(names):
        folder = root / name
        present = _atomic_present(folder, name)
        source = ("embedded" if name == EMBEDDED else "local" if present else "importable" if name in IMPORTERS
                  else "downloadable" if name in urls else "missing")
        infos.append(DatasetInfo(name, present or name == EMBEDDED, folder, source,
                                 dataset_properties_file(name, data_path) is not None))
    return infos
