"""Several datasets at once (training/data.py): the published MIDOG 2025 layout, the csv format, crop/pad to 128,
dataset:domain, --split on the datasets that have a split column, and the pairing of the repeated data options."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
from conftest import AMIBR_FIXTURE, MULTI_FIXTURE, OTHER_COLUMNS
from PIL import Image

from cli.options import add_data, resolve_data
from runtime.errors import InputError
from runtime.stack import fit_size
from training.data import DataSource, ManifestError, csv_format, load

MIDOG25 = MULTI_FIXTURE / "midog25" / "midog25.csv"


def sources(*argv: str) -> list[DataSource]:
    p = argparse.ArgumentParser()
    add_data(p)
    args = p.parse_args(argv)
    resolve_data(args)
    return args.data


def test_midog25_reads_slides_positions_votes_and_the_chosen_domain_column():
    data = load([DataSource(MIDOG25, "midog25")])
    assert data.slide_files[:3].tolist() == ["007.tiff", "091.tiff", "141.tiff"]
    assert data.positions[0].tolist() == [6971, 446]
    # expert1..3 = AMF,AMF,"" -> 2 of 2; NMF,AMF,NMF -> 1 of 3; AMF,NMF,AMF -> 2 of 3
    np.testing.assert_allclose(data.votes[[0, 1, 7]], [1.0, 1 / 3, 2 / 3], rtol=1e-6)
    assert data.labels[:3].tolist() == [1, 0, 1] and "human breast cancer" in data.domains
    scanners = load(sources("--manifest", str(MIDOG25), "--format", "midog25", "--domain-column", "Scanner"))
    assert set(scanners.domains) == {"Hamamatsu XR", "Hamamatsu S360", "Aperio ScanScope CS2", "3D Histech"}
    species = load(sources("--manifest", str(MIDOG25), "--format", "midog25", "--domain-column", "Species"))
    assert set(species.domains) == {"Human", "Canine"}


def test_other_sizes_are_centre_cropped_or_edge_padded_by_the_runtime_rule():
    data = load([DataSource(MIDOG25, "midog25")])
    assert data.images.shape[1:] == (128, 128, 3) and data.resized.tolist() == [0, 1, 0, 0, 1, 1, 0, 0]
    for row in (1, 5):
        original = np.asarray(Image.open(MIDOG25.parent / f"{row + 1}.png").convert("RGB"))
        np.testing.assert_array_equal(data.images[row], fit_size(original[None])[0])
    padded_back = np.asarray(Image.open(MULTI_FIXTURE / "amibr-test" / "MIDOG21_2424.png").convert("RGB"))
    np.testing.assert_array_equal(data.images[1], padded_back)  # 140x140 = the 128 patch, edge-padded


def test_the_csv_format_takes_the_columns_the_user_names():
    data = load([DataSource(MULTI_FIXTURE / "other" / "other.csv", "csv", columns=OTHER_COLUMNS)])
    assert len(data) == 4 and set(data.domains) == {"human breast (other)"} and data.slides is None
    for bad, words in (("path=image", "name the label column"), ("path=image,colour=x", "'colour=x': expected")):
        with pytest.raises(ManifestError, match=words):
            csv_format(bad)


def test_several_datasets_load_as_one_with_dataset_domains_and_the_split_where_there_is_one():
    data = load(sources("--manifest", str(MULTI_FIXTURE / "amibr.csv"), "--format", "amibr",
                         "--manifest", str(MIDOG25), "--format", "midog25",
                         "--manifest", str(MULTI_FIXTURE / "other" / "other.csv"), "--format", "csv",
                         "--columns", OTHER_COLUMNS), split="train")
    assert len(data) == 16 + 8 + 4 and sorted(set(data.datasets)) == ["amibr", "midog25", "other"]
    assert "amibr:tupac16" in data.domains and "midog25:human breast cancer" in data.domains
    assert "other:human breast (other)" in data.domains
    assert all(s.startswith(f"{d}/") for d, s in zip(data.domains, data.slides))
    assert np.isnan(data.votes[data.datasets == "other"]).all()


def test_one_dataset_loads_its_split_rows_as_the_manifest_gives_them():
    manifest = AMIBR_FIXTURE / "manifest.csv"
    data = load(sources("--manifest", str(manifest)), "train")
    with manifest.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == "train"]
    assert data.domains.tolist() == [row["domain"] for row in rows]  # no dataset: prefix with one dataset
    assert data.slides.tolist() == [f"{row['domain']}/{row['slide']}" for row in rows]
    for image, row in zip(data.images, rows):
        np.testing.assert_array_equal(image, np.asarray(Image.open(manifest.parent / row["file"]).convert("RGB")))
    assert set(data.datasets) == {"amibr"}


def test_a_per_dataset_option_belongs_to_the_manifest_it_follows():
    got = sources("--manifest", "a.csv", "--manifest", "b.csv", "--format", "midog25", "--domain-column", "Scanner")
    assert [(s.format, s.domain_column, s.name) for s in got] == [("amibr", None, "amibr"),
                                                                  ("midog25", "Scanner", "midog25")]
    # before the first --manifest: every dataset's, unless one that follows a manifest overrides it there
    got = sources("--format", "midog25", "--manifest", "a.csv", "--manifest", "b.csv", "--format", "amibr")
    assert [(s.format, s.name) for s in got] == [("midog25", "midog25"), ("amibr", "amibr")]
    got = sources("--root", "r", "--manifest", "a.csv", "--manifest", "b.csv", "--name", "omg-octo")
    assert [(str(s.root), s.name) for s in got] == [("r", "amibr"), ("r", "omg-octo")]
    # once per dataset, all after the last --manifest: paired in order
    got = sources("--manifest", "a.csv", "--manifest", "b.csv", "--format", "midog25", "--format", "midog25",
                  "--root", "r1", "--root", "r2")
    assert [(s.format, str(s.root), s.name) for s in got] == [("midog25", "r1", "midog25"),
                                                              ("midog25", "r2", "midog25-2")]
    got = sources("--manifest", "x/o.csv", "--format", "csv", "--columns", "path=p,label=l", "--name", "mine")
    assert got[0].name == "mine" and got[0].columns == "path=p,label=l"
    with pytest.raises(InputError, match=r"--format given 3 time\(s\) for 2 --manifest"):
        sources("--manifest", "a", "--manifest", "b", "--format", "amibr", "--format", "amibr", "--format", "amibr")
    with pytest.raises(InputError, match="--name before the first --manifest"):
        sources("--name", "one", "--manifest", "a", "--manifest", "b")
