"""save_labeled_grid: one labelled row per class, small images enlarged with nearest-neighbour."""

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.images import save_labeled_grid


def read(path):
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im).copy()


def test_unlabelled_grid_enlarges_32px_to_64px_with_nearest_neighbour(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g)
    path = save_labeled_grid(images, tmp_path / "sub" / "grid.png", ncols=3)
    assert path == tmp_path / "sub" / "grid.png" and path.is_file()
    arr = read(path)
    # 2 rows x 3 columns of 64 px cells, a few pixels of padding
    assert 2 * 64 <= arr.shape[0] <= 2 * 64 + 3 * 8
    assert 3 * 64 <= arr.shape[1] <= 3 * 64 + 4 * 8
    # find the first cell: its 64x64 block is image 0 with each pixel repeated 2x2
    expected = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
    found = False
    for y in range(0, 8):
        for x in range(0, 8):
            if np.array_equal(arr[y:y + 64, x:x + 64], expected):
                found = True
    assert found, "the first cell is not the nearest-neighbour enlargement of image 0"


def test_row_labels_are_drawn_left_of_each_row(tmp_path):
    images = torch.full((9, 1, 28, 28), 0.5)  # grey grayscale images: labels are the only black pixels
    plain = read(save_labeled_grid(images, tmp_path / "plain.png", ncols=3))
    labelled = read(save_labeled_grid(images, tmp_path / "labelled.png", ncols=3,
                                      row_labels=["T-shirt/top", "Trouser", "Ankle boot"]))
    assert labelled.shape[0] == plain.shape[0]
    assert labelled.shape[1] > plain.shape[1] + 40  # a label column
    label_w = labelled.shape[1] - plain.shape[1]
    assert np.array_equal(labelled[:, label_w:], plain)  # the images are untouched
    # cells: 28 px -> 84 px (factor 3); each row band of the label column holds dark text pixels
    rows = 3
    band = labelled.shape[0] // rows
    for r in range(rows):
        column = labelled[r * band:(r + 1) * band, :label_w]
        assert (column.min(axis=2) < 80).sum() > 20, f"no label drawn for row {r}"
    assert (plain.min(axis=2) < 80).sum() == 0
    # a different label gives different pixels
    other = read(save_labeled_grid(images, tmp_path / "other.png", ncols=3, row_labels=["Sandal", "Shirt", "Bag"]))
    assert not np.array_equal(other[:, :label_w], labelled[:, :label_w])


def test_partial_last_row_integer_labels_and_large_images(tmp_path):
    images = torch.rand(5, 3, 80, 80)
    arr = read(save_labeled_grid(images, tmp_path / "g.png", ncols=2, row_labels=[0, 5, 9]))
    assert arr.shape[0] < 3 * 80 + 40  # 80 px >= min_cell: not enlarged
    assert arr.shape[0] >= 3 * 80


def test_label_count_must_match_rows(tmp_path):
    with pytest.raises(ValueError, match="3 rows, but 2 row labels"):
        save_labeled_grid(torch.rand(6, 3, 8, 8), tmp_path / "g.png", ncols=2, row_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        save_labeled_grid(torch.rand(3, 8, 8), tmp_path / "g.png", ncols=2)
