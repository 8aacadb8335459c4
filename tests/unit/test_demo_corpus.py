"""The demo corpus keeps the prose of stdlib docstrings: sentences, not doctests, code or lists."""

from __future__ import annotations

from raylm.datasets.demo import prose


def test_prose_keeps_sentences_and_drops_code_lists_and_doctests():
    doc = """Return the number of items in the queue, which is not reliable.

    >>> q.qsize()
    3

This paragraph is wrapped over two lines
and is kept as one line of text.

Args:
    block: whether to wait for an item.

- a list item that is long enough to pass the length check.
x = compute(y) ** 2 + z[0] + {"k": v} + w_under_score_identifier.
short line."""
    assert prose(doc) == ("Return the number of items in the queue, which is not reliable. "
                          "This paragraph is wrapped over two lines and is kept as one line of text.")


def test_prose_of_a_docstring_without_sentences_is_empty():
    assert prose(">>> import os\n>>> os.sep\n'/'") == ""
    assert prose("Parameters\n----------\nx : int\n    The value.") == ""
