"""The floors of the house (docs/architecture.md), read off the imports themselves.

Every module under ``tbviz/`` is parsed with ``ast`` (imports at module level and inside
functions alike), and the graph of imports between tbviz's modules must have

* no import from a lower floor to a higher one, and none sideways between two packages
  of one floor;
* no circle;
* no ``tensorflow``, ``jax`` or ``torch`` outside ``tbviz/backend/``;
* no file writing in the methods: of ``tbviz.summary`` they use only ``images`` (pixels);
* nothing that loads a backend in what TensorBoard's server imports (the plugin, at
  module level, all the way down: not ``keras``, not ``tbviz.backend``).

Each failure names the module, the line and the import.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tbviz"

#: The floors, lowest first; a package may import its own modules and those of lower floors.
#: ``tbviz/__init__.py`` sits above them all (it names the public modules, lazily).
#: Why this order (DESIGN.md: pure functions <- callbacks <- pipeline): the summaries sit
#: below the methods because the panel contract and the image arithmetic serve both sides
#: of it, the callbacks that write and the dashboard that reads (which must load neither
#: Keras nor a method); the methods may use only ``summary.images`` of them (see
#: METHODS_MAY_USE). The callbacks and the plugin share the top floor and never import
#: each other: they agree through ``summary.metadata`` alone.
FLOORS = (
    ("backend",),             # the seam: the only place that knows TensorFlow, JAX, PyTorch
    ("core",),                # layers, backward rules, receptive fields, tokens, probes, checks
    ("stats", "summary"),     # statistics; event writing, image encoding, the panel contract
    ("methods",),             # deconvnet, scan, attribution, synthesis, feature maps
    ("callbacks", "plugin"),  # when to log (Keras callbacks); the dashboard (TensorBoard's)
)
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}
BACKENDS = ("tensorflow", "jax", "torch")
#: What the methods may use of tbviz.summary: image arithmetic, no writing.
METHODS_MAY_USE = {"tbviz.summary.images"}

#: Modules still on TensorFlow while they are ported to the seam: none since the scan was
#: ported. An entry that no longer imports it fails the test, so the list only shrinks.
NOT_YET_PORTED: set = set()


@pytest.fixture(autouse=True)
def _seed():
    """Overrides conftest's seeding: nothing here is random or imports Keras, and importing
    it for the seed would cost seconds (the whole file runs in well under one)."""
    yield


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


class Import:
    """One import statement's target: the module imported, where, and whether at load time."""

    def __init__(self, source, target, line, top_level):
        self.source, self.target, self.line, self.top_level = source, target, line, top_level

    def __repr__(self):
        return f"{self.source} (tbviz/{MODULES[self.source].relative_to(PACKAGE)}:{self.line}) " \
               f"imports {self.target}"


def resolve(name: str) -> str:
    """The tbviz module an imported name lives in: ``tbviz.core.layers.Swaps`` -> its module,
    ``tbviz.backend`` -> the package."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(source: str) -> list[Import]:
    """Every import in ``source``'s file, relative ones resolved, ``from a import b`` read as
    the module ``a.b`` where that is one, else as ``a``."""
    path = MODULES[source]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = source if path.name == "__init__.py" else source.rsplit(".", 1)[0]
    top = {id(node) for node in tree.body}
    # Imports under a module-level if/try still run at load time.
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(names):  # `from m import a, b` is one import of m
            found.append(Import(source, name, node.lineno, id(node) in top))
    return found


ALL = [imp for source in MODULES for imp in imports_of(source)]
INTERNAL = [imp for imp in ALL if imp.target.split(".")[0] == "tbviz"]


def package_of(module: str) -> str | None:
    """``tbviz.methods.attribution.cam`` -> ``"methods"``; ``tbviz`` itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.backends
def test_every_module_is_on_a_floor():
    """A new package must be given its floor here (and in docs/architecture.md)."""
    unplaced = sorted({package_of(m) for m in MODULES} - set(FLOOR) - {None})
    assert not unplaced, f"packages on no floor: {unplaced}; add them to FLOORS"


@pytest.mark.backends
def test_every_floor_is_drawn_in_the_architecture_page():
    """docs/architecture.md draws the floors and says what each package imports: a row of
    its table per package, so a package given a floor here is given one there too."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p for p in FLOOR if f"| `{p}` |" not in page]
    assert not missing, f"packages without a row in docs/architecture.md's table: {missing}"


def floor_violations(imports):
    bad = []
    for imp in imports:
        here, there = package_of(imp.source), package_of(resolve(imp.target))
        if here is None or there is None or here == there:
            continue  # the package facade, or within one package
        if FLOOR[there] >= FLOOR[here]:
            direction = "upward" if FLOOR[there] > FLOOR[here] else "sideways"
            bad.append(f"{imp} ({direction}: {here} is on floor {FLOOR[here]}, "
                       f"{there} on floor {FLOOR[there]})")
    return bad


@pytest.mark.backends
def test_no_import_goes_up_or_sideways():
    bad = floor_violations(INTERNAL)
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


@pytest.mark.backends
def test_the_floor_check_catches_an_upward_import():
    """The check itself, on a made-up import from the core up to a callback."""
    imp = Import("tbviz.core.layers", "tbviz.callbacks.base.VizCallback", 1, True)
    assert floor_violations([imp]) and "upward" in floor_violations([imp])[0]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing
    itself), by Tarjan's algorithm."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def graph(imports):
    edges: dict[str, set[str]] = {}
    for imp in imports:
        target = resolve(imp.target)
        # A module importing its own package's __init__ for a sibling is no circle.
        if target != imp.source and not imp.source.startswith(target + "."):
            edges.setdefault(imp.source, set()).add(target)
    return edges


@pytest.mark.backends
def test_no_import_circle():
    found = [c for c in circles(graph(INTERNAL))]
    detail = [" -> ".join(c) + "\n    " + "\n    ".join(
        repr(i) for i in INTERNAL if i.source in c and resolve(i.target) in c) for c in found]
    assert not found, "import circles:\n" + "\n".join(detail)


@pytest.mark.backends
def test_the_circle_check_catches_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def backend_imports():
    return [imp for imp in ALL if imp.target.split(".")[0] in BACKENDS
            and not imp.source.startswith("tbviz.backend")]


@pytest.mark.backends
def test_only_the_backend_seam_imports_tensorflow_jax_or_torch():
    bad = [repr(imp) for imp in backend_imports() if imp.source not in NOT_YET_PORTED]
    assert not bad, ("imports of a backend outside tbviz/backend/ (go through "
                     "tbviz.backend instead):\n" + "\n".join(bad))


@pytest.mark.backends
def test_modules_not_yet_ported_still_need_their_exception():
    still = {imp.source for imp in backend_imports()}
    ported = sorted(NOT_YET_PORTED - still)
    assert not ported, f"these import no backend any more, remove them from the list: {ported}"


@pytest.mark.backends
def test_methods_write_nothing():
    bad = [repr(imp) for imp in INTERNAL if package_of(imp.source) == "methods"
           and package_of(resolve(imp.target)) == "summary"
           and resolve(imp.target) not in METHODS_MAY_USE]
    assert not bad, ("methods return arrays; writing them is a callback's job. Of "
                     f"tbviz.summary they may use {sorted(METHODS_MAY_USE)}:\n" + "\n".join(bad))


def load_time_closure(start: str) -> dict[str, Import]:
    """Every module (tbviz's and others') imported at load time from ``start``, down through
    tbviz's own modules, each with the import that first brought it in."""
    seen: dict[str, Import] = {}
    todo = [start]
    while todo:
        source = todo.pop()
        for imp in imports_of(source):
            if not imp.top_level:
                continue
            target = resolve(imp.target) if imp.target.startswith("tbviz") else imp.target
            # Importing tbviz.a.b runs tbviz/__init__ and tbviz/a/__init__ first.
            chain = [".".join(target.split(".")[:k]) for k in range(1, target.count(".") + 2)]
            for name in chain:
                if name not in seen:
                    seen[name] = imp
                    if name in MODULES:
                        todo.append(name)
    return seen


@pytest.mark.backends
@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("tbviz.plugin")])
def test_tensorboards_server_loads_no_backend(module):
    """TensorBoard imports the plugin into its server: loading Keras would load TensorFlow
    (~5 s, ~500 MB) into it, and JAX or PyTorch on those backends."""
    loaded = load_time_closure(module)
    bad = [f"{name}, from {loaded[name]!r}" for name in sorted(loaded)
           if name.split(".")[0] in (*BACKENDS, "keras") or name.startswith("tbviz.backend")]
    assert not bad, f"{module} loads at import time:\n" + "\n".join(bad)
