"""MkDocs hooks: the API pages take in every public module, and what ``mkdocs build
--strict`` checks beyond the site's own links.

* **Every public module has a page, without a hand-kept list.** Each page under
  ``docs/api/`` names in its front matter the modules it shows, by prefix
  (``modules: [tbviz.callbacks]`` takes ``tbviz.callbacks.*``). A module is shown on the
  page whose prefix is the longest that matches it. The page's own ``::: module`` lines
  set the order and the options of the modules it names; every other module it takes is
  appended at its end, in alphabetical order. So a new module (``tbviz.callbacks.attention``,
  ``tbviz.methods.faithfulness``) is in the reference the moment it is in the package; give
  it a ``:::`` line of its own only to move it up or to set options.
* **A module that no page takes** (a new package) fails the build, all of them in one
  warning that says where to add a prefix; :data:`NOT_ON_A_PAGE` lists the exceptions and why.
* **Every public function, class and method is shown**: after the build, each public name
  (defined at a module's top level or in one of its classes, no leading ``_``) must be in
  the site's inventory (``objects.inv``, which mkdocstrings writes for what it rendered).
  Those missing are listed in one warning.
* The README (not part of the site) links only to files that exist.

``mkdocs build --strict`` turns each warning into a failure. The source is read with
``ast``: nothing is imported. Loaded by ``mkdocs.yml`` (``hooks: [docs/site_checks.py]``).
"""

from __future__ import annotations

import ast
import logging
import pathlib
import re
import zlib

from mkdocs.utils.meta import get_data

log = logging.getLogger("mkdocs.plugins.site_checks")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tbviz", "style_transfer")
API = "api"
#: Public modules with no page of their own, and why.
NOT_ON_A_PAGE = {
    "tbviz": "its public names are the callbacks and method modules, each on its page",
    "tbviz.callbacks": "a docstring only, which the Callbacks page's introduction says",
    "tbviz.core": "a docstring only, which the Core page's introduction says",
    "tbviz.summary": "a docstring only, which the Summaries page's introduction says",
    "tbviz.plugin": "the plugin's loader entry point only",
    "tbviz.backend.jax": "the same names as tbviz.backend.tensorflow, documented there",
    "tbviz.backend.torch": "the same names as tbviz.backend.tensorflow, documented there",
    "style_transfer.__main__": "`python -m style_transfer` is the style-transfer command",
}
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.M)


def public_modules() -> dict[str, pathlib.Path]:
    """Every module of the packages without a ``_`` in its dotted name (but ``__main__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            if not any(p.startswith("_") and p != "__main__" for p in parts):
                found[".".join(parts)] = path
    return found


def public_names(path: pathlib.Path, module: str) -> list[str]:
    """``module.f``, ``module.C`` and ``module.C.method`` for the public functions, classes
    and methods defined (not imported) in the file."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and not node.name.startswith("_"):
            names.append(f"{module}.{node.name}")
            if isinstance(node, ast.ClassDef):
                names += [f"{module}.{node.name}.{item.name}" for item in node.body
                          if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                          and not item.name.startswith("_")]
    return names


def inventory(path: pathlib.Path) -> set[str]:
    """The names in a Sphinx inventory (version 2: four header lines, then zlib)."""
    data = path.read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def plan(docs_dir: pathlib.Path, modules) -> tuple[dict[str, list[str]], list[str]]:
    """What each API page appends (``{page path: [module, ...]}``, the path relative to
    ``docs_dir``), and the modules no page takes."""
    named, prefixes = set(), {}
    for page in sorted((docs_dir / API).glob("*.md")):
        text, meta = get_data(page.read_text())
        src = page.relative_to(docs_dir).as_posix()
        named |= set(DIRECTIVE.findall(text))
        for prefix in meta.get("modules") or ():
            if prefix in prefixes:
                log.warning("API reference: %s and %s both take the modules %s.*",
                            prefixes[prefix], src, prefix)
            prefixes[prefix] = src
    appended, unplaced = {}, []
    for module in sorted(modules):
        if module in named or module in NOT_ON_A_PAGE:
            continue
        taking = [p for p in prefixes if covers(p, module)]
        if not taking:
            unplaced.append(module)
            continue
        appended.setdefault(prefixes[max(taking, key=len)], []).append(module)
    return appended, unplaced


class _State:
    """The plan of this build, made once its files are known."""
    appended: dict[str, list[str]] = {}
    unplaced: list[str] = []


def on_files(files, config, **kwargs):
    appended, unplaced = plan(pathlib.Path(config["docs_dir"]), public_modules())
    _State.appended, _State.unplaced = appended, unplaced
    if unplaced:
        log.warning(
            "API reference: no page of docs/%s/ takes these public modules:\n  %s\n"
            "Add a prefix of theirs to the 'modules:' front matter of a page there (or a new "
            "page, and put it in mkdocs.yml's nav), or say why not in %s's NOT_ON_A_PAGE.",
            API, "\n  ".join(unplaced), pathlib.Path(__file__).name)
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    extra = _State.appended.get(page.file.src_uri)
    if not extra:
        return markdown
    return markdown.rstrip("\n") + "\n\n" + "".join(f"::: {m}\n\n" for m in extra)


def readme_links() -> list[str]:
    """The README's relative link and image targets that are no file of the repository."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    return [t for t in targets if "://" not in t and not (ROOT / t).exists()]


def on_post_build(config, **kwargs):
    for target in readme_links():
        log.warning("README.md links to %s, which does not exist", target)
    shown = inventory(pathlib.Path(config["site_dir"]) / "objects.inv")
    missing = [name for module, path in public_modules().items()
               if module not in NOT_ON_A_PAGE and module not in _State.unplaced
               for name in public_names(path, module) if name not in shown]
    if missing:
        log.warning("API reference: public but not shown (a filter, or 'members: false' on "
                    "its module's ::: line? a name not meant for users takes a leading _):\n  %s",
                    "\n  ".join(missing))
