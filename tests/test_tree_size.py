"""The working tree a clone holds stays under the project's size budget.

A GPU run copies the working tree (at most 64 MiB), so the tracked files are budgeted at 55 MiB of *bytes*, the
unit git stores and a copy moves. Disk blocks are not counted: they depend on the file system that holds the
checkout (a 4-KiB-block disk rounds every small file up), not on the tree. Each grid spec's SIZE header budgets
its cells in the same bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_docs import clone_paths

REPO = Path(__file__).resolve().parents[1]
BUDGET_BYTES = 55 * 2**20


def clone_bytes(root: Path) -> int | None:
    """Bytes of the files a clone of ``root`` would hold (tracked, or untracked and not ignored, so a file about
    to be committed counts); None outside a git work tree."""
    paths = clone_paths(root)  # with the folders above each file: the file test below skips them
    if paths is None:
        return None
    # lstat: git stores a symbolic link as its target's path, not the file it points at (grids link each cell's
    # base-model eval images to one shared copy). A tracked file deleted in the work tree is skipped.
    return sum((root / p).lstat().st_size for p in paths if (root / p).is_symlink() or (root / p).is_file())


def test_clone_bytes_counts_tracked_and_new_files_but_not_ignored_ones(tmp_path: Path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_bytes(b"*.ckpt\n")
    (tmp_path / "a.csv").write_bytes(b"x" * 1000)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    (tmp_path / "b.npz").write_bytes(b"y" * 300)      # new, not ignored: it will be committed
    (tmp_path / "c.ckpt").write_bytes(b"z" * 10**6)  # ignored: never in a clone
    (tmp_path / "d.csv").symlink_to("a.csv")         # a link costs its target's name, not the target's bytes
    assert clone_bytes(tmp_path) == len(b"*.ckpt\n") + 1000 + 300 + len("a.csv")


def test_the_tree_is_under_its_size_budget():
    size = clone_bytes(REPO)
    if size is None:
        pytest.skip("not a git work tree")
    assert size < BUDGET_BYTES, (
        f"the tree holds {size / 2**20:.1f} MiB, over the {BUDGET_BYTES / 2**20:.0f} MiB budget: commit data, "
        "not checkpoints or images (see docs/usage.md, 'What a finished cell commits')")
