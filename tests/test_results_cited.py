"""Every saved result is cited by the documentation, and every result the documentation
cites exists: a results folder nobody reads is pruned, a figure without its file is not
published."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]


def documentation() -> str:
    pages = [*(REPO / "docs").glob("*.md"), REPO / "README.md", *(REPO / "benchmarks").rglob("README.md")]
    return "\n".join(page.read_text() for page in pages)


def saved_results() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "benchmarks"], cwd=REPO, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_every_results_folder_is_cited_by_the_documentation():
    text = documentation()
    folders = {str(PurePosixPath(path).parent) for path in saved_results()}
    assert folders, "no saved results found"

    def cited(folder: str) -> bool:
        parts = PurePosixPath(folder).parts
        return any("/".join(parts[:end]) + "/" in text for end in range(2, len(parts) + 1))

    uncited = sorted(folder for folder in folders if not cited(folder))
    assert not uncited, f"results no page cites (cite them in docs/benchmarks.md or delete them): {uncited}"


def test_every_result_the_documentation_cites_exists():
    cited = set(re.findall(r"benchmarks/[\w./-]*[\w/]", documentation()))
    missing = sorted(path for path in cited if not (REPO / path).exists())
    assert not missing, f"the documentation cites results that are not saved: {missing}"
