"""The README's Python examples run as printed (a renamed function or a changed return would otherwise
leave them wrong without a failing test)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_its_two_python_examples():
    blocks = python_blocks()
    assert len(blocks) == 2 and "net.backward(onehot" in blocks[0] and "localise_image" in blocks[1]


def test_following_a_gradient_to_the_image():
    env = {}
    exec(compile(python_blocks()[0], "README.md (first example)", "exec"), env)
    assert env["saliency"].shape == (2, 64, 64) and env["g"].shape == env["d"].shape == (2, 3, 64, 64)


def test_from_a_photo_to_its_classes_map_and_box(tmp_path, monkeypatch, capsys):
    """On scikit-image's cat photo (in its wheel), as photo.jpg in the working folder."""
    from skimage import data

    from scratchnet.io.images import save_png
    save_png(tmp_path / "photo.png", data.chelsea())
    (tmp_path / "photo.png").rename(tmp_path / "photo.jpg")        # PIL reads by content, not by name
    monkeypatch.chdir(tmp_path)
    env = {}
    exec(compile(python_blocks()[1], "README.md (second example)", "exec"), env)
    top5, box = capsys.readouterr().out.strip().splitlines()
    assert "cat" in top5.split("'")[1]                         # tiger cat / Egyptian cat / tabby
    assert env["s"].maps.shape == (1, 224, 224) and (tmp_path / "map.png").exists()
    x0, y0, x1, y1 = ast.literal_eval(box)
    assert 0 <= x0 < x1 < data.chelsea().shape[1] and 0 <= y0 < y1 < data.chelsea().shape[0]
