"""What a lab checks before reusing the kit: the licence, the citation file, one version, and a changelog that
names the shipped ensemble. The version is defined once (runtime/version.py); everything else must agree."""

from __future__ import annotations

import hashlib
import re
import tomllib
from datetime import date
from importlib.metadata import version

import yaml
from conftest import ROOT

from runtime.contract import read_spec
from runtime.version import __version__

CFF_REQUIRED = ("cff-version", "message", "title", "authors")  # the Citation File Format 1.2.0's required keys


def test_the_licence_file_is_the_licence_pyproject_names():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_citation_file_parses_with_the_required_keys_and_the_release():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert [key for key in CFF_REQUIRED if not cff.get(key)] == []
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    assert str(cff["version"]) == __version__ == version("amf-mtl")
    date.fromisoformat(str(cff["date-released"]))
    assert all(a.get("name") or a.get("family-names") for a in cff["authors"])
    for ref in cff["references"]:  # each work it builds on is a complete reference
        assert ref["type"] and ref["title"] and ref["authors"] and ref["year"], ref
    titles = " ".join(ref["title"] for ref in cff["references"])
    for work in ("multi-task neural network for atypical mitosis", "(AMi-Br)", "Benchmarking", "MIDOG 2025",
                 "Mitosis Domain Generalization Challenge 2025"):
        assert work in titles, work


def test_the_changelog_has_this_release_with_the_shipped_ensemble():
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## (\d+\.\d+\.\d+) - (\d{4}-\d\d-\d\d)$", text, re.M)
    assert releases and releases[0][0] == __version__  # the newest entry is this version
    entry = text.split(f"## {releases[0][0]} - ", 1)[1].split("\n## ", 1)[0]
    shipped = hashlib.sha256(read_spec(ROOT / "weights").model_file.read_bytes()).hexdigest()[:12]
    assert f"### Shipped ensemble: `{shipped}`" in entry  # new weights need a new entry, so a new version
