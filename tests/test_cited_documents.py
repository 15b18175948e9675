"""Documents the code cites (BENCHMARKS.md, ...) are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_markdown_file_the_code_cites_exists():
    cited: dict[str, list[str]] = {}
    for folder in ("sparsecc", "passes", "plugins", "models", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            for name in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", path.read_text()):
                cited.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert "BENCHMARKS.md" in cited
    missing = {name: files for name, files in cited.items() if not (REPO / name).is_file()}
    assert not missing, f"cited but not in the repository: {missing}"
