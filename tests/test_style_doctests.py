"""The examples in the style_transfer docstrings run as written."""

import doctest
import importlib
import pkgutil

import pytest

import style_transfer

MODULES = sorted(m.name for m in pkgutil.iter_modules(style_transfer.__path__)
                 if m.name != "__main__")


@pytest.mark.backends
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write (runs/...) write here
    module = importlib.import_module(f"style_transfer.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
