"""Human-readable summary of a prepared dataset's manifest."""

from __future__ import annotations


def print_manifest(m: dict, prepared_dir: str) -> None:
    print(f"[raylm] prepared {prepared_dir} in {m.get('seconds', 0):.1f}s: rows in {m['rows_in']}, "
          f"kept {m['rows_kept']}, rejected {m['rows_rejected']} {m['rejected'] or ''}")
    for split, s in m["splits"].items():
        print(f"[raylm]   {split}: {s['rows']} rows, {s['tokens_out']:,} tokens in {len(s['files'])} shards "
              f"({s['docs']} documents, {s['dropped']} tokens dropped)")
