"""The README and docs/ cite what a clone holds: every relative link resolves to a file or folder (and every
``#anchor`` to a heading of the target, by GitHub's slug rule), and every ``results/...`` path cited in backticks
or in a link exists.

"Exists" means in the clone: tracked by git, or untracked but not ignored (it will be committed). A file that is
only present because it is ignored (a report, a checkpoint) does not count. Outside a git checkout the file system
is used. Paths in fenced code blocks are commands and outputs, not citations, and are not checked; ``{a,b}`` braces
are expanded, ``*`` must match at least one path, and ``<placeholder>`` paths are skipped.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_RESULTS_PATH = re.compile(r"(?<![\w./-])results/(?:[^\s`'\"()\[\],;{}]|\{[^{}\s]*\})*")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def clone_paths(root: Path) -> set[str] | None:
    """Files a clone of ``root`` holds (tracked, or untracked and not ignored), as POSIX paths relative to
    ``root``, with every folder above them; None when ``root`` is not in a git work tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = {f for f in out.decode().split("\0") if f}
    paths = set(files)
    for f in files:
        paths.update(str(p) for p in PurePosixPath(f).parents if str(p) != ".")
    return paths


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, HTML comments blanked."""
    text = re.sub(r"<!--.*?-->", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, line))
    return out


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text()):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in expand_braces(path[:m.start()] + alt + path[m.end():])]


def _exists(rel: str, root: Path, paths: set[str] | None) -> bool:
    rel = str(PurePosixPath(rel.rstrip("/"))) if rel.strip("/") else "."
    if rel == ".":
        return True
    if "*" in rel or "?" in rel:
        pool = paths if paths is not None else {str(p.relative_to(root).as_posix()) for p in root.rglob("*")}
        return any(fnmatch.fnmatchcase(p, rel) for p in pool)
    return rel in paths if paths is not None else (root / rel).exists()


def check_docs(root: Path, files: list[Path] | None = None) -> list[str]:
    """Every problem found, as 'file:line: message'; empty when the docs cite only what a clone holds."""
    root = root.resolve()
    paths = clone_paths(root)
    problems: list[str] = []
    anchor_cache: dict[Path, set[str]] = {}
    for md in files if files is not None else doc_files(root):
        rel_md = md.resolve().relative_to(root).as_posix()
        for lineno, line in _prose_lines(md.read_text()):
            where = f"{rel_md}:{lineno}"
            for m in _LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = md.resolve() if not file_part else (md.resolve().parent / file_part).resolve()
                try:
                    dest_rel = dest.relative_to(root).as_posix()
                except ValueError:
                    problems.append(f"{where}: link {target!r} leaves the repository")
                    continue
                if file_part and not _exists(dest_rel, root, paths):
                    problems.append(f"{where}: link {target!r}: {dest_rel} is not in the clone")
                    continue
                if anchor:
                    if dest.suffix != ".md" or not dest.is_file():
                        problems.append(f"{where}: link {target!r}: an anchor on a non-Markdown target")
                        continue
                    known = anchor_cache.setdefault(dest, anchors(dest))
                    if anchor not in known:
                        problems.append(f"{where}: link {target!r}: no heading #{anchor} in {dest_rel}")
            cited = [s.group(2) for s in _CODE_SPAN.finditer(line)]
            for span in cited:
                for hit in _RESULTS_PATH.findall(span):
                    hit = hit.rstrip(".:")
                    if "<" in hit or ">" in hit:
                        continue
                    for path in expand_braces(hit):
                        if not _exists(path, root, paths):
                            problems.append(f"{where}: cited path {path!r} is not in the clone")
    return problems


# ================================================================================================ the repository
def test_readme_and_docs_cite_only_what_a_clone_holds():
    assert (REPO / "docs").is_dir() and doc_files(REPO)
    problems = check_docs(REPO)
    assert not problems, "\n".join(problems)


def test_readme_is_short_and_states_the_finding_early():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:40])
    assert "## What we found" in head and "No difference was detected" in head


# ================================================================================================ the checker
@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A tiny repository outside git: two docs, a results folder and a figure."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "results" / "grid" / "run-s0").mkdir(parents=True)
    (tmp_path / "results" / "grid" / "run-s0" / "metrics.csv").write_text("epoch\n0\n")
    (tmp_path / "results" / "grid" / "run-s1").mkdir()
    (tmp_path / "results" / "grid" / "run-s1" / "metrics.csv").write_text("epoch\n0\n")
    (tmp_path / "results" / "fig.png").write_bytes(b"png")
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## Study v2 (`toy_study`)\n\n### Q1: LoRA vs full?\n\n## Study v2 (`toy_study`)\n")
    return tmp_path


def test_the_checker_passes_a_good_sample(sample: Path):
    (sample / "README.md").write_text(
        "# R\n\nSee [a](docs/a.md#study-v2-toy_study), [again](docs/a.md#study-v2-toy_study-1),\n"
        "[q1](docs/a.md#q1-lora-vs-full), [up](#r) and [web](https://example.org/x#y).\n"
        "![fig](results/fig.png) from `results/grid/run-s{0,1}/metrics.csv` and `results/grid/run-s*/`,\n"
        "a placeholder `results/<grid>/summary/` and a command `python x.py results/grid/run-s0`.\n\n"
        "```bash\npython -m x --out results/not-yet-written\n```\n"
        "<!-- results/only/in/a/comment and [a](nowhere.md) -->\n")
    assert check_docs(sample, doc_files(sample)) == []


def test_the_checker_finds_every_kind_of_bad_citation(sample: Path):
    (sample / "README.md").write_text(
        "# R\n\n[missing file](docs/b.md) and [bad anchor](docs/a.md#study-v3)\n"
        "[bad local anchor](#nowhere) ![missing fig](results/nofig.png) [outside](../elsewhere.md)\n"
        "`results/grid/run-s2/metrics.csv`, `results/grid/run-s{0,7}/` and `results/other/*.csv`\n")
    problems = check_docs(sample, doc_files(sample))
    text = "\n".join(problems)
    for needle in ("docs/b.md", "#study-v3", "#nowhere", "results/nofig.png", "leaves the repository",
                   "'results/grid/run-s2/metrics.csv'", "'results/grid/run-s7/'", "'results/other/*.csv'"):
        assert needle in text, (needle, problems)
    assert len(problems) == 8
    assert all(p.startswith("README.md:") for p in problems)


def test_an_ignored_file_is_not_in_the_clone(sample: Path):
    subprocess.run(["git", "init", "-q"], cwd=sample, check=True)
    (sample / ".gitignore").write_text("results/grid/run-s1/\n")
    (sample / "README.md").write_text("# R\n\n`results/grid/run-s0/metrics.csv`, `results/grid/run-s1/metrics.csv`\n")
    problems = check_docs(sample, doc_files(sample))
    assert len(problems) == 1 and "run-s1" in problems[0]


def test_github_slugs():
    assert github_slug("Study v2 (`toy_study`)") == "study-v2-toy_study"
    assert github_slug("Differences from TRL's DDPOTrainer and ddpo-pytorch") == \
        "differences-from-trls-ddpotrainer-and-ddpo-pytorch"
    assert github_slug('Full fine-tuning "did not collapse" is not reproduced') == \
        "full-fine-tuning-did-not-collapse-is-not-reproduced"
    assert github_slug("Step size: S1 is a lead") == "step-size-s1-is-a-lead"
    assert github_slug("M1-M3: not answered") == "m1-m3-not-answered"
