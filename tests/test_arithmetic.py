"""Generated arithmetic tasks (engine.data.arithmetic): right answers, distinct questions, reproducible
draws, and the built-in task reachable by name from the loader and the suite registry."""

from __future__ import annotations

import json

import pytest

from engine.data.arithmetic import GENERATED, arithmetic_tasks, generated_path, write_generated
from engine.data.suites import SUITES
from engine.data.tasks import load_tasks


def test_questions_carry_their_answers():
    tasks = arithmetic_tasks(100, op="+", low=0, high=9, seed=3)
    assert len(tasks) == 100 and len({t.id for t in tasks}) == 100  # every ordered pair exactly once
    by_id = {t.id: t for t in tasks}
    assert by_id["add-3-4"].question == "What is 3 + 4?" and by_id["add-3-4"].label == "7"
    assert by_id["add-9-9"].label == "18" and by_id["add-0-0"].label == "0"


def test_subtraction_stays_nonnegative_and_multiplication_uses_a_times_sign():
    subs = arithmetic_tasks(55, op="-", low=0, high=9)  # 55 pairs with a >= b
    assert all(int(t.label) >= 0 for t in subs)
    assert {t.id: t.label for t in subs}["sub-9-2"] == "7"
    muls = {t.id: t for t in arithmetic_tasks(64, op="*", low=2, high=9)}
    assert muls["mul-7-8"].question == "What is 7 × 8?" and muls["mul-7-8"].label == "56"


def test_same_seed_same_tasks_other_seed_other_order():
    first = [t.id for t in arithmetic_tasks(20, seed=1)]
    assert first == [t.id for t in arithmetic_tasks(20, seed=1)]
    assert first != [t.id for t in arithmetic_tasks(20, seed=2)]


def test_custom_form_and_bad_requests():
    (task,) = arithmetic_tasks(1, low=2, high=2, form="{a} {op} {b} =")
    assert task.question == "2 + 2 =" and task.label == "4"
    with pytest.raises(ValueError, match="fewer than the 101"):
        arithmetic_tasks(101, low=0, high=9)
    with pytest.raises(ValueError, match="op must be one of"):
        arithmetic_tasks(4, op="/")


def test_builtin_task_is_written_once_and_loads_by_name(tmp_path):
    spec = GENERATED["arith-add-1d"]
    path = write_generated("arith-add-1d", tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == spec.n and all(int(r["answer"]) == sum(map(int, r["prompt"][8:-1].split(" + "))) for r in rows)
    assert write_generated("arith-add-1d", tmp_path) == path  # cached: written once
    assert generated_path("arith-add-1d", tmp_path) == str(path) and generated_path("x.jsonl", tmp_path) == "x.jsonl"
    tasks = load_tasks(generated_path("arith-add-1d", tmp_path))
    assert [t.label for t in tasks] == [r["answer"] for r in rows]
    suite = SUITES["arith-add-1d"]
    assert suite.data_path() == "arith-add-1d" and suite.answer_type == "number"
    assert "{question}" in suite.template
