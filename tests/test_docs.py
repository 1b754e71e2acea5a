"""The documentation stays true to the code: the generated configuration page is current, the README
is a front door (short, its links resolve), every relative link in docs/ points at a real file, and no
tracked file cites notes that live outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from engine.config import reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_configuration_page_is_generated_from_the_help_strings():
    assert reference.main(["--check"]) == 0, "run `python -m engine.config.reference --write`"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    missing = [target for target in LINK.findall(page.read_text(encoding="utf-8"))
               if "://" not in target and not (page.parent / target).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_no_tracked_file_cites_notes_outside_the_repository():
    """A clone has no ../shared: cite the paper, the upstream file or issue, or a page under docs/ instead."""
    names = ["ANCHORS" + ".md", "ENVIRONMENT" + ".md"]  # built from parts, so this file does not match itself
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    citing = []
    for rel in filter(None, tracked.split("\0")):
        path = ROOT / rel
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        citing += [f"{rel} ({name})" for name in names if name in text]
    assert not citing, f"files cite notes a clone does not have: {citing}"


def test_filter_tables_in_the_pages_are_the_generated_ones():
    """docs/filters.md and README.md carry the blocks of benchmarks/results/filter_table.md verbatim (the script
    rewrites all three), so no figure in them can drift from the results files it was computed from."""
    from benchmarks import filter_table
    generated = (filter_table.RESULTS / "filter_table.md").read_text(encoding="utf-8")
    for key, begin, end in (("table", filter_table.BEGIN, filter_table.END),
                            ("summary", filter_table.SUMMARY_BEGIN, filter_table.SUMMARY_END)):
        page = filter_table.DOCS[key]
        text = page.read_text(encoding="utf-8")
        assert text.count(begin) == 1 and text.count(end) == 1, f"{page.name}: no single {begin} … {end} block"
        assert filter_table.marked(text, begin, end) == filter_table.marked(generated, begin, end), (
            f"{page.name} differs from filter_table.md: run `python -m benchmarks.filter_table`")
