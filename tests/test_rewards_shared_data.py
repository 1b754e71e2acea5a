"""Extraction and equivalence on every real benchmark row the project ships in shared/data.

Reference answers come in many spellings (AIME ``025``, AMC ``142.0``, AIME25 ints, MAWPS ``14.0``,
MATH LaTeX such as ``\\$32,\\!348`` or ``864 \\mbox{ inches}^2``, GPQA letters). For every row:
(a) the label is equivalent to itself, (b) to re-spelled versions of itself (boxed, stated, float vs
int, thousands separators, option-letter forms), (c) not to a neighbouring row's label whose
normalized form differs. For MATH the solution's last ``\\boxed{}`` must match the answer field.
No row is excluded. The data is read in place (``TTRL_DATA_DIR`` overrides the location); without it
these tests skip, unless ``TTRL_REQUIRE_DATA=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import functools
import json

import pytest

from factories import SHARED_DATA
from rewards import answers_equivalent, extract_answer, extract_reference, normalize_answer
from rewards.equivalence import canonical_number

DATA_DIR = SHARED_DATA
MATH_LEVELS = [f"ttrl/MATH-L{i}-TTT/test.json" for i in range(1, 6)]
FILES = [
    "ttrl/AIME-TTT/test.json",
    "ttrl/AMC-TTT/test.json",
    "ttrl/MATH-TTT/test.json",
    *MATH_LEVELS,
    "ttrl/GPQA-TTT/test.json",
    "scrl/AIME25-TTT/test.json",
    "mawps/singleop.jsonl",
    "mawps/addsub.jsonl",
    "mawps/multiarith.jsonl",
]

pytestmark = pytest.mark.usefixtures("shared_data")  # skips without the data, fails if TTRL_REQUIRE_DATA=1


@functools.cache
def load(name: str) -> tuple[list[dict], list[str]]:
    """All rows of one file and their labels (``answer`` field, or MAWPS's ``target``)."""
    path = DATA_DIR / name
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = json.loads(path.read_text())
    labels = [extract_reference(str(row["answer"] if "answer" in row else row["target"])) for row in rows]
    assert len(rows) >= 30 and all(labels), name
    return rows, labels


def respellings(label: str) -> list[str]:
    """Other ways a model might write ``label``, each taken through the completion extractor."""
    out = [
        extract_answer(f"So the answer is \\boxed{{{label}}}."),
        extract_answer(f"Checking again.\nTherefore, the final answer is ${label}$."),
        extract_answer(f"The answer is $ {label} $"),
    ]
    number = canonical_number(normalize_answer(label))
    if number is not None:
        value = float(number)
        out += [str(value), f"{value:.2f}" if value * 100 == int(value * 100) else str(value)]
        if value.is_integer():
            n = int(value)
            out += [str(n), f"{n:,}", f"0{n}" if n >= 0 else str(n), extract_answer(f"so {n} is\n#### {n:,}")]
    if len(label) == 1 and label.isalpha():  # GPQA option letters
        out += [f"({label})", f"{label}.", label.lower(), extract_answer(f"The answer is ({label}).")]
    return out


@pytest.mark.parametrize("name", FILES)
def test_label_reads_back_unchanged_from_a_boxed_answer(name):
    # A model that answers exactly the label, boxed, must be read as exactly the label: the completion
    # extractor and the normaliser give the label's own normal form back, string for string (not
    # merely an equivalent one), and normalising is idempotent. (``answers_equivalent(lab, lab)``,
    # which this replaced, is true by its first line, so it could not fail.)
    _, labels = load(name)
    norms = [normalize_answer(lab) for lab in labels]
    assert [lab for lab, n in zip(labels, norms) if not n] == []
    assert [(lab, n) for lab, n in zip(labels, norms) if normalize_answer(n) != n] == []
    read = [normalize_answer(extract_answer(f"Let me think.\nSo the answer is \\boxed{{{lab}}}.") or "") for lab in labels]
    assert [(lab, r) for lab, r, n in zip(labels, read, norms) if r != n] == []


@pytest.mark.parametrize("name", FILES)
def test_label_is_equivalent_to_its_respellings(name):
    _, labels = load(name)
    failures = [(lab, alt) for lab in labels for alt in respellings(lab) if not answers_equivalent(lab, alt)]
    assert failures == []


@pytest.mark.parametrize("name", MATH_LEVELS)
def test_math_solution_box_matches_answer(name):
    rows, labels = load(name)
    boxed = [extract_reference(row["solution"]) for row in rows]
    assert [(lab, b) for lab, b in zip(labels, boxed) if not answers_equivalent(lab, b)] == []


@pytest.mark.parametrize("name", FILES)
def test_different_labels_are_not_equivalent(name):
    # Every row against its next neighbour (cyclically), where their normalized forms differ. On
    # these files no two such labels are genuinely equal, so every pair must come out unequal.
    _, labels = load(name)
    pairs = [(a, b) for a, b in zip(labels, labels[1:] + labels[:1]) if normalize_answer(a) != normalize_answer(b)]
    assert len(pairs) >= 10
    assert [(a, b) for a, b in pairs if answers_equivalent(a, b)] == []
