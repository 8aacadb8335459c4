"""The offline demo corpus: docstrings of the installed Python standard library.

Every machine that runs raylm has these, so the main job needs no download. About 6 MB of
English technical prose in ~25k documents, written once as JSONL and then read like any corpus.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from pathlib import Path

DEMO_DIR = Path("data/demo")
DEMO_FILE = "stdlib_docstrings.jsonl"


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
                f.write(json.dumps({"text": doc, "module": path.stem}) + "\n")
    tmp.replace(out)
    return out
