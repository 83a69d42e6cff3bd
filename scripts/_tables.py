"""The benchmarks' side-by-side tables: aligned text for a terminal, or Markdown (``--markdown``)
for the README and the docs.

    >>> print(table(["backend", "ratio"], [["jax", "0.91"]]))
    backend  ratio
    jax      0.91
    >>> print(table(["backend", "ratio"], [["jax", "0.91"]], markdown=True))
    | backend | ratio |
    |---|---|
    | jax | 0.91 |
"""


def table(header, rows, markdown=False) -> str:
    """``header`` and ``rows`` (lists of strings) as one string of lines."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in [header] + rows)
