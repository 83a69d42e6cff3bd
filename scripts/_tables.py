"""The result table of a benchmark script, as aligned text or, with ``--markdown``, as Markdown.

docs/benchmarks.md embeds the Markdown output of each script under the command that
printed it, so no figure there is typed by hand. Each script collects its results as rows
and prints them once, at the end, with :func:`print_table`.

>>> import argparse
>>> args = add_markdown_flag(argparse.ArgumentParser()).parse_args(["--markdown"])
>>> print_table(["model", "ratio"], [["VGG19", "6.8x"]], args.markdown)
| model | ratio |
|---|---|
| VGG19 | 6.8x |
"""

from __future__ import annotations


def add_markdown_flag(parser):
    """``--markdown``: print the result table as Markdown (for docs/benchmarks.md)."""
    parser.add_argument("--markdown", action="store_true",
                        help="print the result table as Markdown, for docs/benchmarks.md")
    return parser


def table(header, rows, markdown: bool = False) -> str:
    """``rows`` (lists of cells, any type) under ``header``: Markdown, or columns aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def print_table(header, rows, markdown: bool = False) -> None:
    print(table(header, rows, markdown), flush=True)
