"""Every docstring example in tbviz runs as written (style_transfer's: test_style_doctests.py),
on every backend: the modules of the backend seam for the backend Keras runs on."""

import doctest
import importlib
import pkgutil

import keras
import pytest

import tbviz

BACKENDS = ("tensorflow", "jax", "torch")
MODULES = sorted(m.name for m in pkgutil.walk_packages(tbviz.__path__, "tbviz.")
                 if m.name.rsplit(".", 1)[-1] not in BACKENDS
                 or m.name == f"tbviz.backend.{keras.backend.backend()}")


@pytest.mark.backends
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write (runs/...) write here, not in the repo
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
