"""A griffe extension: tbviz's reST-flavoured docstrings read as Markdown in the API reference.

The docstrings are Google-style sections (``Args:``, ``Example:``) with reST inline markup,
which the tests (doctest) and ``help()`` read as they are. mkdocstrings renders Markdown, so
three reST habits would show as stray punctuation; this rewrites them when griffe loads a
docstring, nothing else:

* roles, ``:func:`~tbviz.methods.deconvnet.project``` -> ```project```
  (``~`` keeps the last name, as Sphinx does; without it the whole path);
* simple tables (rows between ``====  ====`` rules, a cell continued on the next line
  when the first column is blank there) -> Markdown tables;
* a paragraph ending in ``::`` (reST's "a literal block follows") -> ``:``, its indented
  block fenced as code;
* an argument entry whose names wrap onto a second line (``graph, losses, ...,`` then
  ``attention: ...``) joined into one, as griffe reads names from one line;
* doctests outside an ``Examples:`` section fenced as code (in Markdown text a printed
  ``[[1, 0], [0, 1]]`` reads as a link), and ``Example:`` read as ``Examples:``, which
  griffe shows as code rather than as a note of Markdown text.

Loaded by ``mkdocs.yml`` (``extensions: [docs/rest_markup.py]``).

>>> rewrite("See :func:`~tbviz.deconvnet.project` and :mod:`tbviz.scan`.")
'See `project` and `tbviz.scan`.'
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
_RULE = re.compile(r"^( *)(=+)( +=+)+ *$")
_EXAMPLES = re.compile(r"^( *)Examples?: *$")
# An argument entry whose names wrap: "a, b, c,\n    d: text" (griffe reads one line).
_WRAPPED_NAMES = re.compile(r"^( +)(\w+(?:, \w+)*,) *\n\1(?=\w+(?:, \w+)*:)", re.M)


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _columns(rule: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _cells(line: str, starts: list[int]) -> list[str]:
    """The cells of one row. A cell that runs past its rule into the gap (``(N,H,W)``
    written to the next column's edge) keeps its text: a column starts at the first
    blank-separated word at or after its rule; the last one takes the rest of the line."""
    cuts = [0]
    for start in starts[1:]:
        at = max(start, cuts[-1])
        while 0 < at < len(line) and line[at - 1] != " ":
            at += 1
        cuts.append(min(at, len(line)))
    return [line[a:b].strip() for a, b in zip(cuts, [*cuts[1:], None])]


def _table(lines: list[str], indent: str) -> list[str]:
    """A reST simple table (its three rules included) as Markdown rows."""
    cols = _columns(lines[0])
    rules = [i for i, line in enumerate(lines) if _RULE.match(line)]
    rows: list[list[str]] = []
    header_end = rules[1] if len(rules) == 3 else None
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if i in rules:
            if i == header_end:
                header, rows = rows[0] if rows else None, []
            continue
        cells = _cells(line, [a for a, _ in cols])
        if rows and not cells[0]:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    if header is None:
        header = [""] * len(cols)

    def row(cells):
        return indent + "| " + " | ".join(map(_escape_pipes, cells)) + " |"

    return [row(header), indent + "|" + "---|" * len(cols), *map(row, rows)]


def _escape_pipes(cell: str) -> str:
    r"""A cell's ``|`` escaped where it would split the Markdown row; inside a code span the
    table extension does not split on it, and an escape there would show its backslash.

    >>> print(_escape_pipes("a | b ``gif|apng``"))
    a \| b ``gif|apng``
    """
    parts = re.split(r"(`+[^`]*`+)", cell)
    return "".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def rewrite(text: str) -> str:
    """``text`` with reST roles, simple tables, ``::`` blocks and bare doctests as Markdown."""
    lines = _WRAPPED_NAMES.sub(r"\1\2 ", _ROLE.sub(_role, text)).split("\n")
    out: list[str] = []
    examples = None  # the indent of the "Examples:" section we are in, if any
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if examples is not None and line.strip() and indent <= examples:
            examples = None
        title = _EXAMPLES.match(line)
        if title:
            # "Example:" would be an admonition of Markdown text, where a doctest's output
            # ("[(0, 1), (2, 3)]") reads as a link; "Examples:" makes griffe show code.
            out.append(title.group(1) + "Examples:")
            examples = indent
            i += 1
            continue
        rule = _RULE.match(line)
        if rule:
            # A table is three rules (header) or two; collect up to its closing rule.
            j, seen = i + 1, 1
            while j < len(lines) and lines[j].strip():
                if _RULE.match(lines[j]):
                    seen += 1
                    if seen == 3 or (seen == 2 and not _header_follows(lines, j)):
                        break
                j += 1
            out.extend(_table(lines[i:j + 1], rule.group(1)))
            i = j + 1
            continue
        if examples is None and line.lstrip().startswith(">>>"):
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            out += [" " * indent + "```pycon", *[b[indent:] if b[:indent].isspace() else b
                                                 for b in lines[i:j]], " " * indent + "```"]
            i = j
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(">>>"):
            head = line.rstrip()[:-2].rstrip()
            block, j = _literal_block(lines, i + 1, indent)
            if head.strip() in ("Example", "Examples"):
                # The same as an "Examples:" section, with its block as code.
                out += [" " * indent + "Examples:", *_fenced(block, indent + 4), ""]
                i = j
                continue
            out.append(head + ":" if head.strip() else head)
            if block:
                out += ["", *_fenced(block, indent), ""]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _literal_block(lines: list[str], j: int, base: int) -> tuple[list[str], int]:
    """The reST literal block from line ``j`` (blank lines, then lines indented deeper
    than ``base``) and the index after it."""
    while j < len(lines) and not lines[j].strip():
        j += 1
    block = []
    while j < len(lines) and (not lines[j].strip()
                              or len(lines[j]) - len(lines[j].lstrip()) > base):
        block.append(lines[j])
        j += 1
    while block and not block[-1].strip():
        block.pop()
    return block, j


def _fenced(block: list[str], indent: int) -> list[str]:
    """``block`` dedented into a fenced code block at ``indent``."""
    if not block:
        return []
    deepest = min(len(b) - len(b.lstrip()) for b in block if b.strip())
    pad = " " * indent
    fence = "```pycon" if block[0].lstrip().startswith(">>>") else "```"
    return [pad + fence, *[pad + b[deepest:] if b.strip() else "" for b in block], pad + "```"]


def _header_follows(lines: list[str], j: int) -> bool:
    """Whether the rule at ``j`` closes a header (more rows, then another rule, follow)."""
    k = j + 1
    while k < len(lines) and lines[k].strip():
        if _RULE.match(lines[k]):
            return True
        k += 1
    return False


class RestMarkup(griffe.Extension):
    """Rewrites each docstring once the object tree is loaded, and leaves out a class's
    undocumented instance attributes (``self.x = x`` in ``__init__``: the arguments again)."""

    def on_class_members(self, *, cls, **kwargs):
        for name in [name for name, member in cls.members.items()
                     if not member.is_alias and member.is_attribute
                     and "instance-attribute" in member.labels and not member.docstring]:
            del cls.members[name]

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

    def on_package(self, *, pkg, **kwargs):
        self.on_object(obj=pkg)  # griffe calls on_object for a package's members only
