"""Load test inputs as :class:`engine.types.Task` lists from local files or the Hugging Face hub.

TTRL adapts a model to *unlabeled* test questions (arXiv 2504.16084), so a row needs only a prompt;
a reference label, where present, is kept for evaluation. Users bring many shapes (TTRL's
``prompt``/``answer`` arrays, MAWPS's ``input``/``target`` lines, GSM8K's ``question``/``answer`` with a
``#### 18`` tail, ``problem``/``solution`` with a final ``\\boxed{}``), so common field names are mapped
by default and any field can be named explicitly.

A bad row fails loudly before any model loads: every :class:`DataError` names the file, where in it
(``line N`` for JSON lines, 1-based; ``record N`` for a JSON array and ``row N`` for parquet or a hub
dataset, both 0-based indices), the field, and what was expected.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.types import Task

PROMPT_FIELDS = ("prompt", "problem", "question", "input", "query", "instruction")
LABEL_FIELDS = ("answer", "target", "final_answer", "label", "solution")
ID_FIELDS = ("id", "unique_id", "idx", "uid")
JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
ARRAY_KEYS = ("data", "examples", "rows")  # top-level keys a JSON object may wrap its rows in
# owner/name with an optional :config, as the hub spells dataset ids ("openai/gsm8k:main").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[\w.-]+)?$")


Row = tuple[str, Any]  # (location such as "x.jsonl, line 3", the parsed row)


def load_tasks(
    source: str | Path,
    *,
    prompt_field: str | None = None,
    label_field: str | None = None,
    id_field: str | None = None,
    split: str = "test",
    limit: int | None = None,
    data_dir: str | Path | None = None,
) -> list[Task]:
    """Read ``source`` into Tasks (``prompt``/``prompt_ids`` are left empty: see ``engine.data.prompts``).

    ``source`` is a ``.json`` array (or an object holding the array under data/examples/rows), a
    ``.jsonl``/``.ndjson`` file, a ``.parquet`` file, a directory holding ``<split>.<suffix>`` (TTRL's
    ``AIME-TTT/test.json`` layout), or, when no such path exists, a hub id ``owner/name[:config]``.
    A relative path is tried as given, then under ``data_dir``. Fields default to the first present of
    :data:`PROMPT_FIELDS`, :data:`LABEL_FIELDS` and :data:`ID_FIELDS` (else the row index); a named field
    must be present in every row. Labels become strings and pass through
    ``rewards.extract.extract_reference`` (``"... #### 18"`` -> ``"18"``). ``limit`` keeps the first N rows.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of rows, got {limit}")
    name, rows = _read_rows(source, split=split, limit=limit, data_dir=data_dir)
    tasks: list[Task] = []
    seen: dict[str, str] = {}  # task id -> location of the row that first used it
    # islice, not a check inside the loop: pulling one row too many would parse (and fail on) it.
    for index, (loc, row) in enumerate(itertools.islice(rows, limit)):
        task = _to_task(loc, index, row, prompt_field, label_field, id_field)
        if task.id in seen:
            raise DataError(f"{loc}: duplicate id {task.id!r} in field {_id_name(row, id_field)!r}, "
                            f"already used at {seen[task.id]}; ids must be unique")
        seen[task.id] = loc
        tasks.append(task)
    if not tasks:
        raise DataError(f"{name}: no rows; expected at least one task")
    return tasks


# --- reading: every reader yields (location, row) pairs ------------------------------------------


def _read_rows(source, *, split, limit, data_dir) -> tuple[str, Iterator[Row]]:
    path = _resolve(source, data_dir)
    if path is None:
        text = str(source)
        if _HUB_ID.match(text) and not text.lower().endswith(SUPPORTED_SUFFIXES):
            return text, _hub_rows(text, split, limit)
        where = f" (also looked under data_dir {str(data_dir)!r})" if data_dir is not None else ""
        raise DataError(f"{text}: file not found{where}; expected a .json, .jsonl, .ndjson or "
                        f".parquet file, a directory holding {split}.<one of those>, "
                        "or a hub dataset id owner/name[:config]")
    if path.is_dir():
        path = _split_file(path, split)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return path.name, _jsonl_rows(path)
    if suffix in JSON_SUFFIXES:
        return path.name, _json_rows(path)
    if suffix in PARQUET_SUFFIXES:
        return path.name, _parquet_rows(path, limit)
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of "
                    f"{', '.join(SUPPORTED_SUFFIXES)}")


def _resolve(source: str | Path, data_dir: str | Path | None) -> Path | None:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if data_dir is not None and not path.is_absolute():
        under = Path(data_dir).expanduser() / path
        if under.exists():
            return under
    return None


def _split_file(directory: Path, split: str) -> Path:
    candidates = [directory / f"{split}{suffix}" for suffix in SUPPORTED_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: directory has no {split} file; expected one of "
                    f"{', '.join(c.name for c in candidates)}")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; an OS error (permission, a directory, an I/O error) is a DataError naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e}); check that it exists, "
                        "is a regular file and is readable") from None


def _jsonl_rows(path: Path) -> Iterator[Row]:
    data = _read_bytes(path)
    if not data.strip():
        raise DataError(f"{path.name}: file is empty; expected one JSON object per line")
    offset = 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        loc = f"{path.name}, line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{loc} (byte offset {offset + e.start}): not valid UTF-8 "
                            f"({e.reason}); expected UTF-8 text") from None
        offset += len(raw)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{loc}: malformed JSON ({e}); expected one JSON object per line") from None
        yield loc, row


def _json_rows(path: Path) -> Iterator[Row]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path.name}, line {line} (byte offset {e.start}): not valid UTF-8 "
                        f"({e.reason}); expected UTF-8 text") from None
    if not text.strip():
        raise DataError(f"{path.name}: file is empty; expected a JSON array of objects")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name}, line {e.lineno}: malformed JSON ({e}); "
                        "expected a JSON array of objects") from None
    if isinstance(doc, dict):
        key = next((k for k in ARRAY_KEYS if isinstance(doc.get(k), list)), None)
        if key is None:
            raise DataError(f"{path.name}: top-level object has no list under "
                            f"{', '.join(ARRAY_KEYS)} (keys: {sorted(doc)}); expected a JSON array "
                            "of objects or an object wrapping one")
        doc = doc[key]
    if not isinstance(doc, list):
        raise DataError(f"{path.name}: top level is of type {type(doc).__name__}; "
                        "expected a JSON array of objects")
    for index, row in enumerate(doc):
        yield f"{path.name}, record {index}", row


def _parquet_rows(path: Path, limit: int | None) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise DataError(f"{path.name}: cannot read as parquet ({e})") from None
    if limit is not None:
        table = table.slice(0, limit)
    for index, row in enumerate(table.to_pylist()):
        yield f"{path.name}, row {index}", row


def _hub_rows(spec: str, split: str, limit: int | None) -> Iterator[Row]:
    """A hub dataset, for users online; ``split`` may carry slicing such as ``test[:50]``."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # network, unknown dataset, unknown config or split
        raise DataError(f"{spec}: cannot load hub dataset (split {split!r}): {e}") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    for index, row in enumerate(ds):
        yield f"{spec} (split {split}), row {index}", row


# --- mapping one row to a Task -------------------------------------------------------------------


def _to_task(loc: str, index: int, row: Any, prompt_field, label_field, id_field) -> Task:
    if not isinstance(row, dict):
        raise DataError(f"{loc}: row is of type {type(row).__name__}; expected a JSON object with a "
                        f"prompt field ({', '.join(PROMPT_FIELDS)})")
    keys = sorted(row)
    field = _pick(loc, row, prompt_field, PROMPT_FIELDS, "prompt")
    if field is None:
        raise DataError(f"{loc}: no prompt field; expected one of {', '.join(PROMPT_FIELDS)} "
                        f"(or name it with prompt_field=); the row has keys {keys}")
    question = row[field]
    if not isinstance(question, str) or not question.strip():
        got = "empty" if isinstance(question, str) else f"of type {type(question).__name__}"
        raise DataError(f"{loc}: field {field!r} is {got}; expected a non-empty string prompt; "
                        f"the row has keys {keys}")
    return Task(id=_task_id(loc, index, row, id_field),
                question=question,
                label=_label(loc, row, _pick(loc, row, label_field, LABEL_FIELDS, "label")))


def _pick(loc: str, row: dict, named: str | None, defaults: tuple[str, ...], what: str) -> str | None:
    """The named field (which must be present) or the first default present and not null."""
    if named is not None:
        if named not in row:
            raise DataError(f"{loc}: {what} field {named!r} is missing; the row has keys {sorted(row)}")
        return named
    return next((f for f in defaults if row.get(f) is not None), None)


def _label(loc: str, row: dict, field: str | None) -> str | None:
    if field is None or row[field] is None:
        return None  # unlabeled task: fine for TTRL, which only needs the question
    value = row[field]
    if isinstance(value, (dict, list)):
        raise DataError(f"{loc}: label field {field!r} is of type {type(value).__name__}; "
                        "expected a string or a number")
    from rewards.extract import extract_reference

    label = extract_reference(str(value))
    return label if label.strip() else None


def _id_name(row: dict, id_field: str | None) -> str:
    if id_field is not None:
        return id_field
    return next((f for f in ID_FIELDS if row.get(f) is not None), "<row index>")


def _task_id(loc: str, index: int, row: dict, id_field: str | None) -> str:
    field = _pick(loc, row, id_field, ID_FIELDS, "id")
    if field is None:
        return str(index)
    value = row[field]
    if value is None or isinstance(value, (dict, list)) or not str(value).strip():
        raise DataError(f"{loc}: id field {field!r} is {value!r}; expected a non-empty string "
                        "or number")
    return str(value)
