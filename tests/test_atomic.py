"""ddpo_study.atomic: a write that fails leaves the old file whole and no stray temporary file."""

import numpy as np
import pytest

from ddpo_study.atomic import atomic_path, write_bytes_if_changed, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "metrics.csv"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_savez_writes_through_its_own_suffix(tmp_path):
    path = tmp_path / "epoch_0000.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, x=np.arange(3))  # would append .npz to a name without it
    with np.load(path) as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0000.npz"]


def test_unchanged_bytes_are_not_rewritten(tmp_path):
    path = tmp_path / "fig.png"
    assert write_bytes_if_changed(path, b"abc")
    mtime = path.stat().st_mtime_ns
    assert not write_bytes_if_changed(path, b"abc") and path.stat().st_mtime_ns == mtime
    assert write_bytes_if_changed(path, b"abd") and path.read_bytes() == b"abd"
