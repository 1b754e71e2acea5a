"""Benchmark suites: every benchmark TTRL reports is one name away (``--suite aime24``).

A :class:`Suite` says where a benchmark's questions come from (a file under the data folder, or a
Hugging Face dataset id for users online), which fields hold the prompt, label and id, how answers are
extracted and compared (``answer_type``), the prompt template, how it is evaluated (k samples,
temperature, token budget) and TTRL's own training schedule for it where the paper has one. The
registry :data:`SUITES` is explicit (no dispatch on dataset names anywhere else); a user's own suite is
a small YAML file with the same keys, e.g.::

    name: my-quiz                 # default: the file's stem
    source: quiz.jsonl            # relative to the YAML file, else to the data folder
    prompt_field: q
    label_field: a
    answer_type: number
    eval_k: 8

A suite only fills *defaults*: ``engine.config.options.parse_config`` applies :meth:`Suite.option_defaults`
below the user's YAML and command line, so anything the user sets wins.

The data folder is ``--data_dir``, else ``$TTRL_DATA_DIR``, else ``../shared/data`` relative to the
current directory when it exists (the layout of this project's machines).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.arithmetic import GENERATED, generated_path
from engine.errors import ConfigError
from engine.data.yaml_file import read_mapping

DEMO_SOURCE = "demo"  # the engine's built-in task (engine.data.demo.build_demo), built offline on first use


class SuiteError(ConfigError):
    """An unknown suite, a bad suite file, or a suite whose data cannot be found; says what to do."""


@dataclass(frozen=True)
class Suite:
    """One benchmark: its data, fields, answer type, template and evaluation defaults.

    Every field but ``name``, ``source``, ``hub_id``, ``hub_split`` and ``description`` is a ``ttrl run``
    option of the same name, so a suite reads like a slice of a config.
    """

    name: str
    source: str | None = None          # file or directory, relative to the data folder ("demo": built in)
    hub_id: str | None = None          # Hugging Face dataset id "owner/name[:config]", for users online
    hub_split: str = "test"
    description: str = ""
    prompt_field: str | None = None    # None: the loader's defaults (prompt, problem, question, input, ...)
    label_field: str | None = None
    id_field: str | None = None
    answer_type: str = "math"          # math, number, choice or 'module:function'
    template: str | None = None        # None: the question + TTRL's \boxed{} instruction
    limit: int | None = None
    eval_k: int = 16                   # TTRL reports avg@16 at temperature 0.6
    eval_temperature: float | None = 0.6
    eval_max_tokens: int | None = None
    episodes: int | None = None        # TTRL's schedule where the paper has one (80 AIME, 30 AMC, 10 MATH)
    prompts_per_step: int | None = None

    @property
    def hub_only(self) -> bool:
        return self.source is None and self.hub_id is not None

    def unavailable_reason(self) -> str | None:
        """Why this suite cannot run here (a hub-only suite while the hub is off), else None."""
        if self.hub_only and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            return (f"suite {self.name!r} is hub-only ({self.hub_id}, split {self.hub_split}): no local file "
                    "is registered and HF_HUB_OFFLINE is set; run it online, or write a suite file "
                    "with a local source")
        return None

    def data_path(self, data_dir: str | Path | None = None) -> str:
        """The ``data`` option for this suite: a local path, ``demo``, or the hub id.

        Raises :class:`SuiteError` naming the suite and the path when a local file is missing.
        """
        if self.source == DEMO_SOURCE or self.source in GENERATED:
            return self.source
        if self.source is None:
            if self.hub_id is None:
                raise SuiteError(f"suite {self.name!r} names neither a source file nor a hub_id")
            return self.hub_id
        path = Path(self.source).expanduser()
        if path.is_absolute():
            candidates = [path]
        else:
            folder = resolve_data_dir(data_dir)
            candidates = [folder / path] if folder is not None else []
        for candidate in candidates:
            if candidate.exists():
                return str(candidate)
        where = str(candidates[0]) if candidates else f"{self.source} (no data folder found)"
        online = f", or load it from the hub with --data {self.hub_id} --split {self.hub_split}" if self.hub_id else ""
        raise SuiteError(f"suite {self.name!r}: data file {where} does not exist; pass --data_dir DIR "
                         f"(a folder holding {self.source}, such as ../shared/data) or set TTRL_DATA_DIR{online}")

    def option_defaults(self, data_dir: str | Path | None = None, *, with_data: bool = True) -> dict[str, Any]:
        """``ttrl run`` option values this suite implies (unset fields are left to the engine)."""
        out: dict[str, Any] = {}
        if with_data:
            out["data"] = self.data_path(data_dir)
            if self.hub_only:
                out["split"] = self.hub_split
        for name in ("prompt_field", "label_field", "id_field", "template", "limit", "eval_max_tokens",
                     "episodes", "prompts_per_step", "eval_temperature"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["answer_type"] = self.answer_type
        out["eval_k"] = self.eval_k
        return out

    def load_tasks(self, data_dir: str | Path | None = None):
        """The suite's tasks (questions, labels, ids), without prompts: for checks and ``--completions``."""
        from engine.data.tasks import load_tasks

        data = self.data_path(data_dir)
        if data == DEMO_SOURCE:
            from engine.data.demo import build_demo

            data = str(build_demo()[1])
        return load_tasks(generated_path(data), prompt_field=self.prompt_field, label_field=self.label_field,
                          id_field=self.id_field, split=self.hub_split, limit=self.limit)


def _math(name: str, folder: str, description: str, **kw) -> Suite:
    return Suite(name=name, source=f"ttrl/{folder}/test.json", description=description, **kw)


def _mawps(name: str, file: str) -> Suite:
    return Suite(name=name, source=f"mawps/{file}.jsonl", answer_type="number",
                 description=f"MAWPS {file} arithmetic word problems (input/target; ids are row numbers)")


SUITES: dict[str, Suite] = {s.name: s for s in [
    _math("aime24", "AIME-TTT", "AIME 2024, 30 problems (TTRL's file)", hub_id="HuggingFaceH4/aime_2024",
          hub_split="train", episodes=80, prompts_per_step=8),
    Suite("aime25", source="scrl/AIME25-TTT/test.json", description="AIME 2025, 30 problems (SCRL's file)",
          episodes=80, prompts_per_step=8),
    _math("amc", "AMC-TTT", "AMC, 83 problems (TTRL's file)", episodes=30, prompts_per_step=8),
    _math("math500", "MATH-TTT", "MATH-500 (TTRL's file)", hub_id="HuggingFaceH4/MATH-500",
          episodes=10, prompts_per_step=32),
    *[_math(f"math500-l{i}", f"MATH-L{i}-TTT", f"MATH-500, difficulty level {i} only",
            episodes=10, prompts_per_step=32) for i in range(1, 6)],
    _math("gpqa", "GPQA-TTT", "GPQA-Diamond, 198 four-option questions (options A-D in the prompt)",
          answer_type="choice"),
    _mawps("mawps-singleop", "singleop"),
    _mawps("mawps-addsub", "addsub"),
    _mawps("mawps-multiarith", "multiarith"),
    Suite("gsm8k", hub_id="openai/gsm8k:main", hub_split="test", answer_type="number",
          description="GSM8K test set from the hub (question / answer with a '#### N' tail); needs internet"),
    Suite("arith-add-1d", source="arith-add-1d", answer_type="number", template="{question} Answer with just the number.",
          eval_k=16, eval_temperature=0.8, eval_max_tokens=24,
          description="64 generated single-digit sums 'What is a + b?' (engine.data.arithmetic): a task SmolLM2-135M's vote "
                      "is often right on (benchmarks/results/real_task_search.md)"),
    Suite("demo", source=DEMO_SOURCE, eval_k=16, eval_temperature=None,
          description="the engine's built-in 5-digit addition task for its demo model (engine.data.demo)"),
]}

SUITE_KEYS = tuple(f.name for f in dataclasses.fields(Suite))


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """``data_dir``, else ``$TTRL_DATA_DIR``, else ``../shared/data`` if that folder exists, else None."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("TTRL_DATA_DIR"):
        return Path(os.environ["TTRL_DATA_DIR"]).expanduser()
    fallback = Path("..") / "shared" / "data"
    return fallback.resolve() if fallback.is_dir() else None


def load_suite(name_or_path: str | Path) -> Suite:
    """A registered suite by name, or a user's suite YAML file (unknown keys are an error naming them)."""
    text = str(name_or_path)
    if text in SUITES:
        return SUITES[text]
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise SuiteError(f"unknown suite {text!r}; registered suites: {', '.join(SUITES)} "
                         "(or give the path of a suite .yaml file)")
    raw = read_mapping(path, SUITE_KEYS, what="suite file", item="key", hint=f"allowed keys: {', '.join(SUITE_KEYS)}",
                       error=SuiteError)
    raw.setdefault("name", path.stem)
    source = raw.get("source")
    if source and source != DEMO_SOURCE and not Path(source).expanduser().is_absolute():
        beside = path.parent / source
        if beside.exists():  # a file next to the suite file; else it is looked up in the data folder
            raw["source"] = str(beside.resolve())
    if not raw.get("source") and not raw.get("hub_id"):
        raise SuiteError(f"suite file {path}: give a source (a data file) or a hub_id")
    try:
        return Suite(**raw)
    except TypeError as err:
        raise SuiteError(f"suite file {path}: {err}") from None


def suite_option_defaults(name_or_path: str, data_dir: str | None, *, with_data: bool = True) -> dict[str, Any]:
    """What ``parse_config`` applies for ``--suite``; ``with_data=False`` when the user set ``--data``."""
    return load_suite(name_or_path).option_defaults(data_dir, with_data=with_data)
