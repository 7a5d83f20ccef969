"""training/data.py: the AMi-Br, MIDOG25 and folder layouts, manifest errors and slide ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import AMIBR_FIXTURE
from PIL import Image

from training.data import DataSource, ManifestError, check, load


def test_fixture_loads_with_labels_domains_and_votes(patches):
    assert patches.images.shape == (16, 128, 128, 3) and patches.images.dtype == np.uint8
    assert patches.labels.sum() == 8 and len(set(patches.domains)) == 4
    assert set(patches.splits) == {"train"} and np.all((patches.votes >= 0) & (patches.votes <= 1))


def test_bad_manifest_rows_are_all_listed_in_one_error(tmp_path):
    rows = (AMIBR_FIXTURE / "manifest.csv").read_text().splitlines()
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    head, good = rows[0], rows[1].split(",")
    good[0] = str((AMIBR_FIXTURE / good[0]).resolve())
    bad_label = list(good)
    bad_label[1] = "mitosis-ish"
    missing = list(good)
    missing[0] = str(tmp_path / "nope.png")
    unreadable = list(good)
    unreadable[0] = str(garbage)
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([head, ",".join(good), ",".join(bad_label), ",".join(missing), ",".join(unreadable)]))
    with pytest.raises(ManifestError) as err:
        load([DataSource(manifest, root=Path("/"))])
    msg = str(err.value)
    assert "3 bad row(s)" in msg and "line 3" in msg and "'mitosis-ish'" in msg
    assert "line 4" in msg and "file not found" in msg and "line 5" in msg and "cannot read the image" in msg


def test_midog25_and_folder_layouts(tmp_path, patches):
    for i, (im, y) in enumerate(zip(patches.images[:4], patches.labels[:4])):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        d = tmp_path / "tree" / ("human-breast" if i % 2 else "canine-lymphoma") / ("atypical" if y else "normal")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i}.png")
    lines = ["image_id,majority,Tumor"] + [f"{i},{'AMF' if y else 'NMF'},t{i % 2}"
                                           for i, y in enumerate(patches.labels[:4])]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    m = load([DataSource(tmp_path / "m.csv", "midog25")])
    assert m.labels.tolist() == patches.labels[:4].tolist() and sorted(set(m.domains)) == ["t0", "t1"]
    f = load([DataSource(tmp_path / "tree", "folders")])
    assert len(f) == 4 and sorted(set(f.domains)) == ["canine-lymphoma", "human-breast"]
    np.testing.assert_array_equal(np.sort(f.images.reshape(4, -1).sum(1)), np.sort(m.images.reshape(4, -1).sum(1)))


def test_manifest_slides_are_domain_qualified():
    data = load([DataSource(AMIBR_FIXTURE / "manifest.csv")])
    assert data.slides is not None and data.slides[0] == f"{data.domains[0]}/141.tiff"
    assert data.subset(np.array([3, 1])).slides.tolist() == [data.slides[3], data.slides[1]]


def test_a_csv_saved_with_a_byte_order_mark_reads_as_without(tmp_path, patches):
    """Spreadsheet programs save "CSV UTF-8" with a byte-order mark: it is not part of the first column's name."""
    text = (AMIBR_FIXTURE / "manifest.csv").read_text()
    manifest = tmp_path / "bom.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode())
    source = DataSource(manifest, "amibr", root=AMIBR_FIXTURE)
    check([source], "train")
    data = load([source])
    assert len(data) == len(patches) and np.array_equal(data.images, patches.images)


def test_a_bad_number_names_its_line_and_column(tmp_path):
    rows = (AMIBR_FIXTURE / "manifest.csv").read_text().splitlines()
    head = rows[0].split(",")
    bad = rows[1].split(",")
    bad[head.index("x")] = "12;5"
    bad[head.index("votes_atypical")] = "two"
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([rows[0], ",".join(bad), *rows[2:]]))
    with pytest.raises(ManifestError) as err:
        load([DataSource(manifest, "amibr", root=AMIBR_FIXTURE)])
    assert "line 2: column 'votes_atypical': 'two' is not a number" in str(err.value)
    bad[head.index("votes_atypical")] = "1"
    manifest.write_text("\n".join([rows[0], ",".join(bad), *rows[2:]]))
    with pytest.raises(ManifestError, match=r"line 2: column 'x': '12;5' is not a number"):
        load([DataSource(manifest, "amibr", root=AMIBR_FIXTURE)])
