"""benchmarks/RESULTS.md is shared by several benchmarks: each owns one marked section and rewrites only that."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, name: str, section: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    block = f"{start}\n{section}{end}"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
