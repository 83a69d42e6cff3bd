"""The documentation site's own machinery: ``docs/site_checks.py`` (the MkDocs hook that
``mkdocs build --strict`` runs: which API page takes which module, and what fails) and
``docs/rest_markup.py`` (the griffe extension that reads the docstrings' reST as Markdown).

They need the ``docs`` extra (MkDocs); ``.ci/run`` installs it and runs this file before
it builds the site. Without it they skip.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
pytestmark = pytest.mark.backends


def _load(name):
    """A module of ``docs/`` (not a package: MkDocs loads them by path)."""
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


site_checks, rest_markup = _load("site_checks"), _load("rest_markup")


@pytest.fixture(autouse=True)
def _seed():
    """Overrides conftest's seeding: nothing here is random or imports Keras."""
    yield


def test_every_public_module_of_the_tree_is_taken_by_an_api_page():
    appended, unplaced = site_checks.plan(DOCS, site_checks.public_modules())
    assert not unplaced, f"no page of docs/api/ takes {unplaced}"
    # What a page takes without naming it is shown at its end, on a page that exists.
    assert all((DOCS / page).is_file() for page in appended), sorted(appended)


def test_a_new_module_lands_on_the_page_of_its_longest_prefix():
    modules = {**site_checks.public_modules(), "tbviz.callbacks.attention": None,
               "tbviz.methods.faithfulness": None, "tbviz.methods.attention": None,
               "tbviz.methods.attribution.rise": None, "tbviz.metrics": None,
               "tbviz.metrics.deletion": None}
    appended, unplaced = site_checks.plan(DOCS, modules)
    assert "tbviz.callbacks.attention" in appended["api/callbacks.md"]
    assert "tbviz.methods.faithfulness" in appended["api/attribution.md"]
    assert "tbviz.methods.attribution.rise" in appended["api/attribution.md"]
    # A method module that no page of its own takes goes to the Methods page.
    assert appended["api/methods.md"] == ["tbviz.methods.attention"]
    # A new package is on no page until a page's front matter takes it: the build fails.
    assert unplaced == ["tbviz.metrics", "tbviz.metrics.deletion"]


def test_a_module_named_on_a_page_is_not_appended_again():
    appended, _ = site_checks.plan(DOCS, site_checks.public_modules())
    named = {m for page in (DOCS / "api").glob("*.md")
             for m in site_checks.DIRECTIVE.findall(page.read_text())}
    assert "tbviz.methods.deconvnet" in named
    assert not named & {m for ms in appended.values() for m in ms}


def test_public_names_are_those_defined_in_the_file(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from os import path\n\n"
                    "def f():\n    pass\n\n"
                    "def _hidden():\n    pass\n\n"
                    "class C:\n    def run(self):\n        pass\n\n    def _inner(self):\n"
                    "        pass\n")
    assert site_checks.public_names(path, "pkg.m") == ["pkg.m.f", "pkg.m.C", "pkg.m.C.run"]


def test_the_readme_links_only_to_files_that_exist():
    assert site_checks.readme_links() == []


def test_rest_markup_examples():
    """``docs/rest_markup.py`` (the griffe extension) runs its own docstring examples."""
    import doctest

    result = doctest.testmod(rest_markup)
    assert result.attempted >= 2 and not result.failed


def test_a_pipe_in_a_table_cell_splits_no_row_and_shows_no_backslash_in_code():
    table = ("=====  ==================\n"
             "route  parameters\n"
             "=====  ==================\n"
             "/a     ``format=gif|apng``\n"
             "/b     one | two\n"
             "=====  ==================")
    rows = rest_markup.rewrite(table).split("\n")
    assert rows[2] == "| /a | ``format=gif|apng`` |"
    assert rows[3] == "| /b | one \\| two |"


def test_argument_names_that_wrap_onto_a_second_line_are_read_as_one_entry():
    text = ("Args:\n    graph, losses, histograms,\n    attention: ``True`` or a dict.\n"
            "    strict: re-raise.")
    assert rest_markup.rewrite(text).split("\n") == [
        "Args:", "    graph, losses, histograms, attention: ``True`` or a dict.",
        "    strict: re-raise."]
