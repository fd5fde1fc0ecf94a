"""Reading records from local files or the hub, and writing JSONL atomically.

Every record comes back as a :class:`Row` that remembers where it came from, so a later
format error can name the exact file and line ("data/x.jsonl:17: missing field 'output'").
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rlhf.errors import UserError
from rlhf.paths import resolve_path

LOCAL_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")
# One data file of a hub repo, e.g. hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json; the way to read
# datasets whose configs live in a loading script, which `datasets` >= 4 no longer runs.
HF_FILE_PREFIX = "hf://"


@dataclass(frozen=True)
class Row:
    """One record and where it was read from: ``"data/x.jsonl:17"`` (line) or ``"data/x.json[3]"`` (index)."""

    data: dict[str, Any]
    where: str


def read_rows(source: str, split: str | None = None, config: str | None = None) -> list[Row]:
    """All records of ``source``: a local .json/.jsonl/.json.gz/.jsonl.gz/.parquet file; an ``hf://datasets/...``
    data-file URL (json, jsonl or parquet; a glob is fine); else a hub dataset name or a local dataset folder, loaded
    with ``datasets.load_dataset(source, config, split=split)``.

    ``config`` (the dataset's subset, e.g. a config declared in the card's ``configs:``) and ``split`` (default
    ``"train"``) only apply to hub datasets and folders; a file or data-file URL is one split and takes neither.
    Raises UserError (one line, naming the file and line) on a missing file, bad JSON,
    a record that is not an object, or a source with no records.
    """
    path = resolve_path(source)
    if source.startswith(HF_FILE_PREFIX) or path.is_file():
        if config is not None or split is not None:
            raise UserError(f"{source}: a single data file has no config or split; "
                            "name the dataset (or its folder) to pick one")
        rows = _read_hub_file(source) if source.startswith(HF_FILE_PREFIX) else _read_local(path, source)
    elif path.is_dir():  # a folder of data files or a saved dataset: `datasets` knows those layouts
        rows = _read_hub(str(path), config, split or "train")
    elif _looks_like_local_path(source, path):
        raise UserError(f"{source}: no such file")
    else:
        rows = _read_hub(source, config, split or "train")
    if not rows:
        raise UserError(f"{source}: no records")
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON Lines; a temp file then ``os.replace`` so readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the result is an ordinary shared data file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _looks_like_local_path(source: str, path: Path) -> bool:
    """A name that can only be meant as a file (a suffix we read, or an explicit path), not a hub dataset."""
    if source.endswith(LOCAL_SUFFIXES) or path.exists():
        return True
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1


def _read_local(path: Path, name: str) -> list[Row]:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        return _read_jsonl(path, name)
    if suffix in (".json", ".json.gz"):
        return _read_json_list(path, name)
    if suffix == ".parquet":
        return _read_parquet(path, name)
    raise UserError(f"{name}: unsupported file type (expected one of {', '.join(LOCAL_SUFFIXES)})")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _read_jsonl(path: Path, name: str) -> list[Row]:
    rows: list[Row] = []
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{name}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
                rows.append(_as_row(record, where))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"{name}: cannot read: {e}") from None
    return rows


def _read_json_list(path: Path, name: str) -> list[Row]:
    try:
        with _open_text(path) as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{name}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"{name}: cannot read: {e}") from None
    if not isinstance(records, list):
        raise UserError(f"{name}: expected a JSON list of objects, got {type(records).__name__}")
    return [_as_row(record, f"{name}[{i}]") for i, record in enumerate(records)]


def _read_parquet(path: Path, name: str) -> list[Row]:
    import pyarrow.parquet as pq  # ships with `datasets`; imported late to keep startup light

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise UserError(f"{name}: cannot read parquet: {e}") from None
    return [_as_row(record, f"{name}[{i}]") for i, record in enumerate(records)]


def _read_hub(name: str, config: str | None, split: str) -> list[Row]:
    import datasets  # heavy; only needed for hub sources

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, bad config or split: all are the user's to fix
        raise UserError(f"{name}: not a local file and could not load it as a dataset "
                        f"(config {config!r}, split {split!r}): {_first_line(e)}") from None
    where = f"{name}[{config}:{split}]" if config else f"{name}[{split}]"
    return [_as_row(record, f"{where}[{i}]") for i, record in enumerate(dataset)]


def _read_hub_file(url: str) -> list[Row]:
    import datasets

    suffix = url.removesuffix(".gz").rsplit(".", 1)[-1]
    builder = {"json": "json", "jsonl": "json", "parquet": "parquet"}.get(suffix)
    if builder is None:
        raise UserError(f"{url}: unsupported data file (expected .json, .jsonl, .parquet)")
    try:
        dataset = datasets.load_dataset(builder, data_files=url, split="train")
    except Exception as e:
        raise UserError(f"{url}: could not load the data file: {_first_line(e)}") from None
    return [_as_row(record, f"{url}[{i}]") for i, record in enumerate(dataset)]


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _as_row(record: Any, where: str) -> Row:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return Row(data=record, where=where)
