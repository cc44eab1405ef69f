"""Escaping user-supplied text (method, dataset, backbone and display names, notes) for each output
format, the one place: Markdown (and so the HTML made from it), CSV, LaTeX and matplotlib labels.

A name in a record or a suite is text of the user's; written unescaped it could run a script in
report.html (Markdown passes raw HTML through), a formula in a spreadsheet opening a CSV
(OWASP "CSV injection"), or a command in tables.tex. Every writer of those files calls these.
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

# <a, </a, <!-- and <? open HTML (CommonMark 6.6, Python-Markdown): the only way raw HTML starts
_HTML_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#|[A-Za-z0-9]+;)")
# characters that start Markdown inline syntax anywhere: code, emphasis, links, table cells
_INLINE = re.compile(r"([\\`*\[\]|])")
# an underscore opens emphasis only at a word boundary (intraword "coop_anchoropt" stays plain)
_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# at the start of a line: heading, list item, block quote, ordered list
_LINE_START = re.compile(r"^(?:([#+\->])|(\d+)([.)]))")


def markdown(text: Any, line_start: bool = False) -> str:
    """``text`` as literal Markdown inline text: whitespace runs (newlines included) become one space,
    raw HTML and entities are spelled as entities, and Markdown syntax characters are
    backslash-escaped, so the rendered text is ``text`` and never a tag, link, code span or table cell
    boundary. ``line_start``: ``text`` starts a line or list item (``- {text}``), so a leading
    ``# + - >`` or ``1.`` is escaped too (no heading, list or quote)."""
    text = " ".join(str(text).split())
    text = _ENTITY.sub("&amp;", text)
    text = _HTML_OPEN.sub("&lt;", text)
    text = _INLINE.sub(r"\\\1", text)
    text = _UNDERSCORE.sub(r"\\_", text)
    if not line_start:
        return text
    return _LINE_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", text, count=1)


#: first characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A string starting with ``= + - @`` (or tab / carriage return) prefixed with ``'``, which
    spreadsheets read as "text follows"; numbers and other values unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with :func:`csv_cell` applied to every cell, column name and index label."""
    return table.map(csv_cell).rename(index=csv_cell, columns=csv_cell)


def write_csv(table: pd.DataFrame, path, index: bool = False) -> None:
    """``table.to_csv(path)`` with every string neutralised by :func:`csv_cell`; the one CSV writer."""
    csv_frame(table).to_csv(path, index=index)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex(text: Any) -> str:
    """``text`` as literal LaTeX text: the ten special characters (and ``< > |``, which the default
    OT1 font prints as other glyphs) spelled as commands, whitespace runs as one space (a blank line
    would end the paragraph inside a table)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in " ".join(str(text).split()))


def mathtext(text: Any) -> str:
    """``text`` for a matplotlib label: ``$`` escaped, so that a name is never parsed as mathtext."""
    return str(text).replace("$", r"\$")
