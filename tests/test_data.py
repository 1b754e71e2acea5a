"""engine.data.tasks: the shared benchmark files load with the default mapping; small temp files cover the
field mapping, label extraction and every error message (file, line/record, field)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import DataError
from engine.data.tasks import load_tasks
from factories import SHARED_DATA

DATA = SHARED_DATA

# Record counts as found in the files. The MAWPS files have no final newline, so `wc -l` reports one
# fewer (394 / 599 / 561) than the records they hold.
REAL_FILES = {
    "ttrl/AIME-TTT/test.json": 30,
    "ttrl/AMC-TTT/test.json": 83,
    "ttrl/MATH-TTT/test.json": 500,
    "ttrl/MATH-L1-TTT/test.json": 43,
    "ttrl/MATH-L2-TTT/test.json": 90,
    "ttrl/MATH-L3-TTT/test.json": 105,
    "ttrl/MATH-L4-TTT/test.json": 128,
    "ttrl/MATH-L5-TTT/test.json": 134,
    "ttrl/GPQA-TTT/test.json": 198,
    "scrl/AIME25-TTT/test.json": 30,
    "mawps/singleop.jsonl": 562,
    "mawps/addsub.jsonl": 395,
    "mawps/multiarith.jsonl": 600,
}

needs_data = pytest.mark.usefixtures("shared_data")  # skip without the data; fail if TTRL_REQUIRE_DATA=1


# --- factories -------------------------------------------------------------------------------------


def write_jsonl(tmp_path: Path, rows: list, name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(tmp_path: Path, doc, name: str = "tasks.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def write_parquet(tmp_path: Path, rows: list[dict], name: str = "tasks.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_tasks(*args, **kwargs)
    return str(info.value)


# --- the shared benchmark files --------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("rel, count", sorted(REAL_FILES.items()))
def test_real_file_loads_with_default_mapping(rel, count):
    tasks = load_tasks(DATA / rel)
    assert len(tasks) == count
    assert all(t.question.strip() for t in tasks)
    assert all(t.label is not None and t.label.strip() for t in tasks)
    assert len({t.id for t in tasks}) == count
    assert all(t.prompt == "" and t.prompt_ids == () for t in tasks)


@needs_data
def test_real_file_values():
    assert load_tasks(DATA / "ttrl/AMC-TTT/test.json")[0].label == "142.0"
    assert load_tasks(DATA / "scrl/AIME25-TTT/test.json")[0].label == "70"  # int answer -> str
    addsub = load_tasks(DATA / "mawps/addsub.jsonl")
    assert (addsub[0].id, addsub[0].label) == ("0", "43.0")  # no id field: the row index
    assert addsub[0].question.startswith("Joan found 70 seashells")
    level1 = load_tasks(DATA / "ttrl/MATH-L1-TTT/test.json")[0]
    assert level1.label == "\\sqrt{51}"  # "answer" wins over "solution"
    assert level1.id == "test/precalculus/1303.json"  # from unique_id


@needs_data
def test_directory_relative_path_and_limit():
    assert len(load_tasks(DATA / "ttrl/AIME-TTT")) == 30  # a directory means <dir>/<split>.json
    tasks = load_tasks("ttrl/AIME-TTT/test.json", data_dir=DATA, limit=5)
    assert [t.id for t in tasks] == ["0", "1", "2", "3", "4"]


# --- round trips and field mapping -----------------------------------------------------------------

ROWS = [
    {"question": "What is 2 + 3?", "answer": "5", "id": "a"},
    {"question": "What is 7 * 6?", "answer": 42, "id": "b"},
    {"question": "Halve 3.", "answer": 1.5, "id": "c"},
]
EXPECTED = [("a", "What is 2 + 3?", "5"), ("b", "What is 7 * 6?", "42"), ("c", "Halve 3.", "1.5")]


def triples(tasks):
    return [(t.id, t.question, t.label) for t in tasks]


def test_jsonl_round_trip(tmp_path):
    assert triples(load_tasks(write_jsonl(tmp_path, ROWS))) == EXPECTED


def test_ndjson_with_blank_lines(tmp_path):
    path = tmp_path / "tasks.ndjson"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n   \n" + json.dumps(ROWS[1]), encoding="utf-8")
    assert triples(load_tasks(path)) == EXPECTED[:2]


def test_json_array_round_trip(tmp_path):
    assert triples(load_tasks(write_json(tmp_path, ROWS))) == EXPECTED


@pytest.mark.parametrize("key", ["data", "examples", "rows"])
def test_json_object_wrapping_the_array(tmp_path, key):
    assert triples(load_tasks(write_json(tmp_path, {"version": 1, key: ROWS}))) == EXPECTED


def test_parquet_round_trip(tmp_path):
    rows = [{**r, "answer": str(r["answer"])} for r in ROWS]  # one column type for parquet
    assert triples(load_tasks(write_parquet(tmp_path, rows))) == EXPECTED
    assert triples(load_tasks(tmp_path / "tasks.parquet", limit=2)) == EXPECTED[:2]


def test_user_named_fields(tmp_path):
    rows = [{"q": "Add 1 and 1.", "gold": "2", "key": 17, "prompt": "not this one"}]
    [task] = load_tasks(write_jsonl(tmp_path, rows), prompt_field="q", label_field="gold", id_field="key")
    assert (task.id, task.question, task.label) == ("17", "Add 1 and 1.", "2")


def test_default_field_priority(tmp_path):
    row = {"instruction": "i", "problem": "p", "question": "q", "solution": "s", "target": 3,
           "uid": "u", "idx": 9}
    [task] = load_tasks(write_jsonl(tmp_path, [row]))
    assert (task.id, task.question, task.label) == ("9", "p", "3")  # problem > question; target > solution


def test_null_default_field_falls_through(tmp_path):
    [task] = load_tasks(write_jsonl(tmp_path, [{"prompt": None, "input": "x", "answer": None, "label": "L"}]))
    assert (task.question, task.label) == ("x", "L")


def test_gsm8k_tail_and_boxed_solution(tmp_path):
    rows = [
        {"question": "Q1", "answer": "She pays 3 * 6 = <<3*6=18>>18 dollars.\n#### 18"},
        {"problem": "Q2",
         "solution": "So $x = \\boxed{\\frac{1}{2}}$, not \\boxed{3}? No: \\boxed{\\frac{a}{b}}."},
    ]
    tasks = load_tasks(write_jsonl(tmp_path, rows))
    assert [t.label for t in tasks] == ["18", "\\frac{a}{b}"]


def test_unlabeled_rows_and_index_ids(tmp_path):
    tasks = load_tasks(write_jsonl(tmp_path, [{"prompt": "one"}, {"prompt": "two", "answer": None}]))
    assert triples(tasks) == [("0", "one", None), ("1", "two", None)]


def test_limit_stops_before_a_bad_later_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n", encoding="utf-8")
    assert triples(load_tasks(path, limit=1)) == EXPECTED[:1]


# --- errors: each names the file, where in it, and the field ----------------------------------------


@pytest.mark.parametrize("value, said", [(None, "NoneType"), (7, "int"), ("", "empty"), ("  \n", "empty")])
def test_bad_prompt_value_jsonl(tmp_path, value, said):
    path = write_jsonl(tmp_path, [{"prompt": "fine", "id": "y"}, {"prompt": value, "answer": "1", "id": "z"}])
    msg = error_of(path, prompt_field="prompt") if value is None else error_of(path)
    assert "tasks.jsonl" in msg and "line 2" in msg and "'prompt'" in msg and said in msg
    assert "['answer', 'id', 'prompt']" in msg  # the row's keys


def test_missing_prompt_lists_keys_json(tmp_path):
    msg = error_of(write_json(tmp_path, [ROWS[0], ROWS[1], {"text": "hi", "answer": "1"}]))
    assert "tasks.json" in msg and "record 2" in msg and "prompt" in msg
    assert "['answer', 'text']" in msg and "problem" in msg  # lists the fields it looked for


def test_named_field_missing_parquet(tmp_path):
    path = write_parquet(tmp_path, [{"question": "q", "answer": "1"}])
    msg = error_of(path, label_field="gold")
    assert "tasks.parquet" in msg and "row 0" in msg and "'gold'" in msg and "['answer', 'question']" in msg


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path, [ROWS[0], ROWS[1], {**ROWS[2], "id": "a"}])
    msg = error_of(path)
    assert "tasks.jsonl" in msg and "line 3" in msg and "line 1" in msg and "'id'" in msg and "'a'" in msg


def test_malformed_json_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "x",}\n', encoding="utf-8")
    msg = error_of(path)
    assert "tasks.jsonl" in msg and "line 3" in msg and "malformed JSON" in msg
    assert "Expecting property name" in msg  # the JSON error itself


def test_malformed_json_array(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text('[\n  {"prompt": "x"},\n  {"prompt": }\n]', encoding="utf-8")
    msg = error_of(path)
    assert "tasks.json" in msg and "line 3" in msg and "malformed JSON" in msg


def test_non_utf8_jsonl(tmp_path):
    path = tmp_path / "tasks.jsonl"
    first = (json.dumps(ROWS[0]) + "\n").encode()
    path.write_bytes(first + b'{"prompt": "caf\xe9"}\n')
    msg = error_of(path)
    # the bad byte sits after the first line and the 15 bytes of '{"prompt": "caf'
    assert "tasks.jsonl" in msg and "line 2" in msg and f"byte offset {len(first) + 15}" in msg
    assert "UTF-8" in msg


def test_non_utf8_json(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_bytes(b'[\n{"prompt": "\xff"}\n]')
    msg = error_of(path)
    assert "tasks.json" in msg and "line 2" in msg and "byte offset 14" in msg and "UTF-8" in msg


@pytest.mark.parametrize("name, content", [("tasks.jsonl", ""), ("tasks.jsonl", "\n \n"),
                                           ("tasks.json", ""), ("tasks.json", "[]")])
def test_empty_files(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    msg = error_of(tmp_path / name)
    assert name in msg and ("empty" in msg or "no rows" in msg)


def test_empty_parquet(tmp_path):
    path = tmp_path / "tasks.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    assert "tasks.parquet" in error_of(path) and "no rows" in error_of(path)


def test_row_not_an_object(tmp_path):
    msg = error_of(write_json(tmp_path, [ROWS[0], "just a string"]))
    assert "tasks.json" in msg and "record 1" in msg and "str" in msg


def test_json_top_level_not_an_array(tmp_path):
    msg = error_of(write_json(tmp_path, {"items": ROWS}))
    assert "tasks.json" in msg and "data, examples, rows" in msg and "['items']" in msg


def test_label_list_rejected(tmp_path):
    msg = error_of(write_jsonl(tmp_path, [{"prompt": "x", "answer": ["1", "2"]}]))
    assert "tasks.jsonl" in msg and "line 1" in msg and "'answer'" in msg and "list" in msg


def test_missing_file(tmp_path):
    msg = error_of(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in msg and "file not found" in msg
    msg = error_of("nope.jsonl", data_dir=tmp_path)  # relative: tried as given, then under data_dir
    assert "nope.jsonl" in msg and "file not found" in msg and str(tmp_path) in msg
    assert "file not found" in error_of("some/dir/tasks.json")  # not a hub id: it has a suffix


def test_directory_without_split_file(tmp_path):
    msg = error_of(tmp_path, split="test")
    assert str(tmp_path) in msg and "test.json" in msg


def test_unsupported_suffix(tmp_path):
    (tmp_path / "tasks.csv").write_text("prompt\nx\n")
    msg = error_of(tmp_path / "tasks.csv")
    assert "tasks.csv" in msg and ".jsonl" in msg


def test_limit_must_be_positive(tmp_path):
    assert "limit" in error_of(write_jsonl(tmp_path, ROWS), limit=0)


def test_hub_id_goes_to_load_dataset(monkeypatch):
    """The hub path, offline: a fake ``load_dataset`` stands in for the network."""
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"question": "Q1", "answer": "x\n#### 7"},
                                           {"question": "Q2", "answer": "#### 8"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tasks = load_tasks("openai/gsm8k:main", split="train", limit=1)
    assert calls == [("openai/gsm8k", "main", "train")]
    assert triples(tasks) == [("0", "Q1", "7")]
    msg = error_of("openai/gsm8k", prompt_field="text")
    assert "openai/gsm8k" in msg and "row 0" in msg and "'text'" in msg


def test_benchmark_data_tests_fail_rather_than_skip_when_the_data_is_required(tmp_path):
    """Without ../shared/data the benchmark-data tests skip; with TTRL_REQUIRE_DATA=1 (CI) they fail."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TTRL_REQUIRE_DATA"}
    env["TTRL_DATA_DIR"] = str(tmp_path / "no-data-here")
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_rewards_shared_data.py",
            "-k", "respellings and AIME-TTT"]
    skipped = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    failed = subprocess.run(args, cwd=root, env={**env, "TTRL_REQUIRE_DATA": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout[-2000:]   # fails in setup
    assert "TTRL_REQUIRE_DATA=1 but there is no benchmark data" in failed.stdout
