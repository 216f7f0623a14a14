"""Markdown pieces every report writes: a table cell that cannot break its table."""

from __future__ import annotations

from typing import Any


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell: `|` escaped, line breaks folded, None empty."""
    return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")
