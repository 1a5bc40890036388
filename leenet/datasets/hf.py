"""Hugging Face ``datasets``: ``hf:NAME[:CONFIG]`` from the local cache, ``hf-local:DIR[:CONFIG]`` from files.

Where the data comes from:

* ``hf:NAME[:CONFIG]`` (e.g. ``hf:uoft-cs/cifar10``) is read offline: from the cache that
  ``datasets.load_dataset`` fills (``$HF_DATASETS_CACHE``) or, failing that, from a Hub snapshot
  (``hf download --repo-type dataset NAME`` into ``$HF_HUB_CACHE``). With ``download`` it is
  fetched by ``datasets.load_dataset`` (refused while ``HF_HUB_OFFLINE=1``).
* ``hf-local:DIR[:CONFIG]`` reads parquet or arrow files in the Hub's layouts
  (``plain_text/train-00000-of-00001.parquet``, ``data/train-*.parquet``, ``train/*.arrow``) in
  place, without a cache copy, or a ``DatasetDict.save_to_disk`` folder.

What is read from the splits, and how images are held: :mod:`leenet.datasets.hf_splits`.
``datasets`` is optional (``pip install 'leenet[hf]'``) and imported on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from leenet.datasets.folder import FolderData
from leenet.datasets.hf_splits import read_splits
from leenet.datasets.memory import ArrayData
from leenet.errors import DataError, brief

INSTALL = "pip install 'leenet[hf]' (or pip install datasets)"
_DATA_SUFFIXES = (".parquet", ".arrow")
_SPLIT_FOLDERS = frozenset({"data", "train", "test", "validation", "valid", "val"})
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def require_datasets() -> ModuleType:
    """The ``datasets`` package, imported on first use (it is optional and slow to import)."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"Hugging Face datasets need the `datasets` package: {INSTALL}") from exc
    if not hasattr(datasets, "load_dataset"):  # a folder named datasets on sys.path (tests/datasets)
        raise DataError(f"Hugging Face datasets need the `datasets` package: {INSTALL}")
    return datasets


def read_hub(ref: str, data_dir: Path | None = None, download: bool = False) -> ArrayData | FolderData:
    """``hf:NAME[:CONFIG]``: a Hub dataset from the offline cache, or downloaded.

    Args:
        ref: ``NAME[:CONFIG]``, e.g. ``uoft-cs/cifar10`` or ``frgfm/imagenette:320px``.
        data_dir: the Hugging Face cache folder (``$HF_HOME``, or a folder used as both the
            datasets and the hub cache); ``None`` = ``$HF_DATASETS_CACHE`` and ``$HF_HUB_CACHE``.
        download: fetch the dataset with ``datasets.load_dataset`` (goes online).

    Raises:
        DataError: ``datasets`` missing, not cached, or a dataset LEENet cannot use.
    """
    name, _, config = ref.partition(":")
    source = f"hf:{ref}"
    if not _HUB_ID.fullmatch(name):
        raise DataError(f"{source}: give a Hub dataset id after hf:, e.g. hf:uoft-cs/cifar10 or "
                        f"hf:frgfm/imagenette:320px")
    hf = require_datasets()
    from huggingface_hub import constants as hub_constants

    root = data_dir.expanduser() if data_dir is not None else None
    data_cache = _under(root, "datasets") or Path(hf.config.HF_DATASETS_CACHE)
    hub_cache = _under(root, "hub") or Path(hub_constants.HF_HUB_CACHE)
    if download:
        splits = _download(hf, source, name, config or None, data_cache)
    else:
        splits = _from_cache(hf, source, name, config or None, data_cache, hub_cache)
    return read_splits(hf, source, splits)


def read_local(ref: str, data_dir: Path | None = None, download: bool = False) -> ArrayData | FolderData:
    """``hf-local:DIR[:CONFIG]``: parquet / arrow files in a Hub layout, or a ``save_to_disk`` folder.

    Args:
        ref: ``DIR``, or ``DIR:CONFIG`` for a folder whose README declares configurations.
        data_dir: must be None (the folder is in ``ref``).
        download: ignored (nothing to fetch).
    """
    source = f"hf-local:{ref}"
    if data_dir is not None:
        raise DataError(f"{source} names its folder, so --data-dir {data_dir} would be ignored: drop it")
    root, config = Path(ref).expanduser(), None
    head, sep, tail = ref.rpartition(":")
    if not root.exists() and sep and Path(head).expanduser().is_dir():
        root, config = Path(head).expanduser(), tail
    hf = require_datasets()
    return read_splits(hf, source, _open_local(hf, source, root, config))


def _under(root: Path | None, sub: str) -> Path | None:
    if root is None:
        return None
    return root / sub if (root / sub).is_dir() else root


@contextmanager
def _offline(hf: ModuleType) -> Iterator[None]:
    """``datasets`` reads ``HF_HUB_OFFLINE`` once, at import: set its copy while reading the cache
    (and quiet its warning that it fell back to the cache, which is the point here)."""
    before, verbosity = hf.config.HF_HUB_OFFLINE, hf.utils.logging.get_verbosity()
    hf.config.HF_HUB_OFFLINE = True
    hf.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        hf.config.HF_HUB_OFFLINE = before
        hf.utils.logging.set_verbosity(verbosity)


def _download(hf: ModuleType, source: str, name: str, config: str | None,
              cache: Path) -> Mapping[str, Any]:
    if hf.config.HF_HUB_OFFLINE:
        raise DataError(f"{source}: HF_HUB_OFFLINE=1 forbids --download: unset HF_HUB_OFFLINE, or drop "
                        f"--download to read the offline cache")
    try:
        return hf.load_dataset(name, config, cache_dir=str(cache))
    except Exception as exc:  # network, auth and Hub errors come as many types
        raise DataError(f"downloading {source} failed ({brief(exc)}): check the name and configuration "
                        f"on huggingface.co/datasets and the network") from exc


def _from_cache(hf: ModuleType, source: str, name: str, config: str | None,
                data_cache: Path, hub_cache: Path) -> Mapping[str, Any]:
    ns, _, short = name.rpartition("/")
    folder = data_cache / "___".join(p for p in (ns, hf.naming.camelcase_to_snakecase(short)) if p)
    cached = sorted(p.name for p in folder.glob("*") if p.is_dir())
    if cached and (config in cached or (config is None and len(cached) == 1)):
        try:
            with _offline(hf):
                return hf.load_dataset(name, config, cache_dir=str(data_cache))
        except Exception as exc:  # the cache builder raises ValueError, OSError, arrow errors
            raise DataError(f"cannot read {source} from the cache {folder} ({brief(exc)}): "
                            f"add --download to fetch it again") from exc
    snapshot = hub_cache / f"datasets--{name.replace('/', '--')}"
    if snapshot.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(name, repo_type="dataset", local_files_only=True, cache_dir=str(hub_cache))
        except (OSError, ValueError) as exc:
            raise DataError(f"the Hub snapshot {snapshot} of {source} is incomplete ({brief(exc)}): "
                            f"add --download, or run hf download --repo-type dataset {name}") from exc
        return _open_local(hf, source, Path(path), config)
    if cached:
        raise DataError(f"{source}: configuration {config or '(none given)'} is not in the cache {folder} "
                        f"(cached: {', '.join(cached)}): use hf:{name}:{cached[0]}, or add --download")
    raise DataError(f"{source} is not in the offline Hugging Face cache ({data_cache}, {hub_cache}): "
                    f"add --download to fetch it, or pass --data-dir with the cache that holds it")


def _open_local(hf: ModuleType, source: str, root: Path, config: str | None) -> Mapping[str, Any]:
    if not root.is_dir():
        raise DataError(f"{source}: folder {root} not found: give a folder of parquet or arrow files, "
                        f"or one written by DatasetDict.save_to_disk")
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        if config is not None:
            raise DataError(f"{source}: a save_to_disk folder has no configurations: drop :{config}")
        try:
            loaded = hf.load_from_disk(str(root))
        except Exception as exc:  # arrow and json errors of a damaged folder
            raise DataError(f"{source}: cannot read the save_to_disk folder {root} ({brief(exc)}): "
                            f"save the DatasetDict again") from exc
        return loaded if isinstance(loaded, hf.DatasetDict) else {}
    files = [p.relative_to(root) for p in root.rglob("*") if p.suffix in _DATA_SUFFIXES and p.is_file()]
    if not files:
        raise DataError(f"{source}: {root} holds no .parquet or .arrow files and no save_to_disk folder: "
                        f"point at the folder holding them")
    configs = _configs(hf, source, root, files)
    if config is None and len(configs) > 1:
        raise DataError(f"{source} holds several configurations ({', '.join(configs)}): "
                        f"add one, e.g. {source}:{configs[0]}")
    if config is not None and config not in configs:
        raise DataError(f"{source} has no configuration {config!r} (it has: {', '.join(configs)}): "
                        f"use one of them")
    try:
        return hf.load_dataset(str(root), config, streaming=True)  # reads the files in place
    except Exception as exc:  # the file builders raise ValueError, FileNotFoundError, arrow errors
        raise DataError(f"cannot read {source} ({brief(exc)}): give files in the Hub's layout, "
                        f"e.g. DIR/data/train-00000-of-00001.parquet") from exc


def _configs(hf: ModuleType, source: str, root: Path, files: list[Path]) -> list[str]:
    """Configurations of a folder: from its README, else one per top folder of data files, so that
    the Hub layout of several configurations (``160px/``, ``320px/``) is not read as one."""
    if (root / "README.md").is_file():
        try:
            return list(hf.get_dataset_config_names(str(root)))
        except Exception as exc:  # a README whose YAML header is broken
            raise DataError(f"{source}: cannot read {root / 'README.md'} ({brief(exc)}): fix or remove it") from exc
    tops = sorted({f.parts[0] for f in files if len(f.parts) > 1 and f.parts[0] not in _SPLIT_FOLDERS})
    if len(tops) > 1:
        raise DataError(f"{source} holds the files of several configurations ({', '.join(tops)}): "
                        f"use hf-local:{root / tops[0]}")
    return ["default"]


