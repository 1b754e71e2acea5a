"""``--anchor FILE``: a handful of labeled examples, read as the test prompts are and held out of them.

A label-free score cannot tell a confidently wrong majority from a right one (TTRL's own failure mode,
arXiv 2504.16084 §5; arXiv 2603.08660). A user adapting at test time usually has a small labeled dev set —
LESS's setting (Xia et al., arXiv 2402.04333: a few labeled examples as the target of gradient influence).
The anchors are k such examples (typically 8-32): they are the influence selector's ``labeled`` target,
``--guard_score anchor_accuracy``'s measurement, and the ``anchor/*`` columns of every evaluation — never a
prompt the run trains on.

They are read by ``engine.data.tasks.load_tasks`` with the ``--data`` options (the same field detection, the
same errors naming file, line and field); ``engine.cli.build`` then applies the same template. Two checks of
their own: every anchor has a label (an anchor measures nothing without one), and no anchor question is a
test prompt's question (a score on examples the run trains on would reward memorising them).
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import DataError
from engine.types import Task
from engine.data.tasks import LABEL_FIELDS, load_tasks


def load_anchors(source: str | Path, tests: list[Task], *, prompt_field: str | None = None,
                 label_field: str | None = None, id_field: str | None = None, split: str = "test",
                 data_dir: str | Path | None = None) -> list[Task]:
    """The labeled anchor examples in ``source`` (a .json / .jsonl / .parquet file, as ``--data`` takes), checked
    to carry a label each and to share no question with ``tests`` (the run's test prompts); every error is one
    line naming the anchor file."""
    try:
        anchors = load_tasks(source, prompt_field=prompt_field, label_field=label_field, id_field=id_field,
                             split=split, data_dir=data_dir)
    except DataError as err:
        raise DataError(f"anchor: {err}") from None
    unlabeled = [a.id for a in anchors if a.label is None]
    if len(unlabeled) == len(anchors):
        fields = f"field {label_field!r}" if label_field else f"one of {', '.join(LABEL_FIELDS)}"
        raise DataError(f"anchor {source}: no example has a label ({fields}, or name it with --label_field); "
                        "anchors are labeled examples")
    if unlabeled:
        raise DataError(f"anchor {source}: {len(unlabeled)} of {len(anchors)} examples have no label (ids "
                        f"{', '.join(unlabeled[:5])}{', ...' if len(unlabeled) > 5 else ''}); every anchor needs one")
    test_ids = {t.question.strip(): t.id for t in tests}
    shared = [(a.id, test_ids[a.question.strip()], a.question) for a in anchors if a.question.strip() in test_ids]
    if shared:
        named = "; ".join(f"anchor id {a} = test id {t} ({q.strip()[:40]!r})" for a, t, q in shared[:3])
        raise DataError(f"anchor {source}: {len(shared)} of {len(anchors)} anchor questions are test prompts too ({named}"
                        f"{'; ...' if len(shared) > 3 else ''}); anchors must be held out of --data")
    return anchors
