"""MkDocs hooks: what ``mkdocs build --strict`` checks beyond the site's own links.

* The README (not part of the site) links only to files that exist.
* The API reference shows every public name. After the site is built, every public module of ``tbviz`` and ``style_transfer`` must be
on an API page (a ``::: module`` line under ``docs/api/``), and every public function,
class and method of those modules (top level, names without a leading ``_``) must be in
the site's inventory (``objects.inv``, which mkdocstrings writes for what it rendered).
Each one missing is a warning, which ``mkdocs build --strict`` turns into a failure. The
source is read with ``ast``: nothing is imported.

Loaded by ``mkdocs.yml`` (``hooks: [docs/site_checks.py]``).
"""

from __future__ import annotations

import ast
import logging
import pathlib
import re
import zlib

log = logging.getLogger("mkdocs.plugins.site_checks")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tbviz", "style_transfer")
#: Public modules with no page of their own, and why.
NOT_ON_A_PAGE = {
    "tbviz": "its public names are the callbacks and method modules, each on its page",
    "tbviz.callbacks": "an empty package", "tbviz.core": "an empty package",
    "tbviz.methods": "an empty package", "tbviz.summary": "an empty package",
    "tbviz.plugin": "the plugin's loader entry point only",
    "tbviz.backend.jax": "the same names as tbviz.backend.tensorflow, documented there",
    "tbviz.backend.torch": "the same names as tbviz.backend.tensorflow, documented there",
    "style_transfer.__main__": "`python -m style_transfer` is the style-transfer command",
}


def public_modules() -> dict[str, pathlib.Path]:
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


def documented_modules(docs_dir: pathlib.Path) -> set[str]:
    return {m.group(1) for page in (docs_dir / "api").glob("*.md")
            for m in re.finditer(r"^::: ([\w.]+)", page.read_text(), re.M)}


def readme_links() -> list[str]:
    """The README's relative link and image targets that are no file of the repository."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    return [t for t in targets if "://" not in t and not (ROOT / t).exists()]


def on_post_build(config, **kwargs):
    for target in readme_links():
        log.warning("README.md links to %s, which does not exist", target)
    docs_dir = pathlib.Path(config["docs_dir"])
    shown = inventory(pathlib.Path(config["site_dir"]) / "objects.inv")
    on_pages = documented_modules(docs_dir)
    missing = []
    for module, path in public_modules().items():
        if module not in on_pages:
            if module not in NOT_ON_A_PAGE:
                log.warning("API reference: module %s is on no page of docs/api/ (add "
                            "'::: %s' to one, or say why not in %s)", module, module,
                            pathlib.Path(__file__).name)
            continue
        missing += [name for name in public_names(path, module) if name not in shown]
    for name in missing:
        log.warning("API reference: %s is public but not shown (a filter, or members: "
                    "false on its module's page?)", name)
