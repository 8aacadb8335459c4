"""The offline demo corpus: the prose of the installed Python standard library's docstrings.

Every machine that runs raylm has these, so the main job needs no download. Only the paragraphs
that read as English sentences are kept (no doctest sessions, code, option or parameter lists,
tables), each paragraph's wrapped lines joined: about 0.9 MB in ~5,000 documents on Python 3.11,
written once as JSONL and then read like any corpus. A model that can be trained in three minutes
on two cores learns to write sentences from this; from the raw docstrings (1.9 MB, half of it code
and layout) its samples were fragments of doctest prompts and parameter lists.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sysconfig
from pathlib import Path

DEMO_DIR = Path("data/demo")
DEMO_FILE = "stdlib_prose.jsonl"  # a new name when the selection changes: an existing file is reused
_PROSE_CHAR = re.compile(r"[A-Za-z0-9 ,.;:'\"()\-?!]")
_LIST_OR_CODE = (">>>", "...", "*", "-", "+", "|", ":")


def prose(doc: str) -> str:
    """The paragraphs of a docstring that are sentences, each on one line, joined by a space."""
    keep = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(line[:1].isspace() or line.lstrip().startswith(_LIST_OR_CODE) for line in lines):
            continue  # indented (code, parameter lists) or a list / doctest / table line
        text = " ".join(line.strip() for line in lines)
        if len(text) < 40 or not text[0].isupper() or not text.endswith("."):
            continue
        if sum(1 for c in text if _PROSE_CHAR.match(c)) < 0.97 * len(text):
            continue  # markup, identifiers, formulas
        keep.append(text)
    return " ".join(keep)


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    out = []
    for n in nodes:
        doc = ast.get_docstring(n)
        if doc and len(doc) >= 40:
            out.append(doc)
    return out


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def build_demo_corpus(out_dir: str | Path = DEMO_DIR) -> Path:
    """Write the demo corpus (idempotent: an existing file is reused)."""
    out = Path(out_dir) / DEMO_FILE
    if out.exists() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for path in stdlib_files():
            for doc in _docstrings(path):
                text = prose(doc)
                if text:
                    f.write(json.dumps({"text": text, "module": path.stem}) + "\n")
    tmp.replace(out)
    return out
