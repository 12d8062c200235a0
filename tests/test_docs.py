"""The docs point only at what the repository holds, and name no package index that lacks us."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = ("client/", "daemon/", "workloads/", "tests/", "benchmarks/", "docs/", "packaging/", "scripts/", "shared/")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE = re.compile(r"`([^`\s]+)`")


def referenced(path: Path) -> set[str]:
    text = path.read_text()
    refs = {m for m in LINK.findall(text) if "://" not in m and not m.startswith("mailto:")}
    refs = {str((path.parent / m).resolve().relative_to(REPO)) if not m.startswith("/") else m for m in refs}
    for token in CODE.findall(text):
        token = token.rstrip(".,:;)")
        if token.startswith(TOP) and not any(c in token for c in "*{}<>$[]"):
            refs.add(token.split(":")[0].split("::")[0])
    return refs


def test_docs_refer_only_to_files_in_the_repository() -> None:
    missing = []
    assert sum(len(referenced(d)) for d in DOCS) > 20  # the scan does find the references
    for doc in DOCS:
        for ref in sorted(referenced(doc)):
            if ref.startswith("/"):
                continue  # a path on the machine (/etc/..., /opt/...), not the repository's
            if not (REPO / ref).exists():
                missing.append(f"{doc.relative_to(REPO)}: {ref}")
    assert not missing, "\n".join(missing)


def test_no_install_from_an_index_that_does_not_carry_the_package() -> None:
    bad = re.compile(
        r"pip install[^\n`]*'gpuos-hint(-client)?(\[[a-z,]+\])?'|pip install[^\n`]* gpuos-hint(-client)?(\s|$)"
    )
    hits = []
    for f in [*DOCS, *(REPO / "daemon").rglob("*.py"), *(REPO / "client").rglob("*.py"), *(REPO / "scripts").iterdir()]:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if bad.search(line):
                hits.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
