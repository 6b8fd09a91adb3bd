"""The output writer (model/serving/output.py): files that read back, the last outputs kept, the masks
folder made at setup."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.images import photo_like
from model.serving.output import OutputWriter, make_masks_dir
from tests.serving.test_png import decoded


def test_output_writer_writes_png_that_reads_back() -> None:
    image = photo_like(960, 720, seed=3)
    writer = OutputWriter("png")
    path = writer.write(image, seed=7)
    assert path.suffix == ".png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(decoded(path.read_bytes()), np.asarray(image))
    writer.close()


def test_output_writer_keeps_the_last_outputs_and_removes_all_when_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    writer = OutputWriter("png", keep=2)
    paths = [writer.write(Image.new("RGB", (8, 8), (k, 0, 0)), seed=k) for k in range(3)]
    assert len({p.parent for p in paths}) == 3, "each output has a folder of its own"
    assert [p.exists() for p in paths] == [False, True, True]
    assert list(tmp_path.iterdir()) == [writer.root]
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_masks_folder_is_made_at_setup_or_refused_by_name(tmp_path: Path) -> None:
    make_masks_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RuntimeError, match=r"GEN4_MASKS_DIR='.*/file' cannot be used as a folder"):
        make_masks_dir(tmp_path / "file")
