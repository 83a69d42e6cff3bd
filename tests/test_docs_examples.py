"""The manual's examples run as written.

Every ```` ```python ```` block of a page under ``docs/`` runs, in page order, in one
namespace per page (a page's later blocks use what its first one built, as a reader
does), in a fresh working directory. Fragments that cannot run on their own (they need
the user's data, a download or minutes of training) are fenced ```` ```py ```` instead:
highlighted the same, not run here.
"""

from __future__ import annotations

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PAGES = sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()))


def test_some_pages_have_examples():
    assert len(PAGES) >= 5, PAGES


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write runs/...
    namespace = {"__name__": "__docs__"}
    for number, code in enumerate(BLOCK.findall(page.read_text()), 1):
        try:
            exec(compile(code, f"{page.name}, block {number}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.relative_to(DOCS)}: block {number} failed: "
                                 f"{type(err).__name__}: {err}\n{code}") from err
