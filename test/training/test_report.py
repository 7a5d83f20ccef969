"""``amf evaluate`` on exported ensembles: the container's scoring path, the comparison of two ensembles, and
report.html's structure (one self-contained page: tables, embedded plots, a gallery of the vote's most confident
errors per domain with one vote per fold)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
from conftest import AMIBR_FIXTURE, make_tiny_ensemble, tiny_model_probs

from cli.main import main as amf
from runtime.vote import vote
from training.data import DataSource, load

OFFSETS = (-2.0, -2.5, -1.5, -3.0)  # the tiny model calls some fixture patches normal, some atypical
THRESHOLDS = [0.5, 0.4, 0.6, 0.3]
MANIFEST = AMIBR_FIXTURE / "manifest.csv"


class Page(HTMLParser):
    """The page as a tree of elements: {"tag", "attrs", "text" (all text inside), "children"}."""

    VOID = {"img", "meta", "br", "link", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.root = {"tag": "", "attrs": {}, "text": "", "children": []}
        self.open = [self.root]

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        self.open[-1]["children"].append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_endtag(self, tag):
        assert self.open[-1]["tag"] == tag, f"</{tag}> closes <{self.open[-1]['tag']}>"
        self.open.pop()

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data


def find(element: dict, tag: str, cls: str | None = None) -> list[dict]:
    """Descendants of ``element`` with this tag (and class), in document order."""
    out = []
    for child in element["children"]:
        if child["tag"] == tag and (cls is None or cls in child["attrs"].get("class", "").split()):
            out.append(child)
        out += find(child, tag, cls)
    return out


def evaluate(tmp_path, *sources, extra=()) -> tuple[dict, dict, str]:
    out = tmp_path / "report"
    assert amf(["evaluate", *map(str, sources), "--manifest", str(MANIFEST), "--out", str(out), "--bootstrap", "200",
                "--gallery", "1", *extra]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    parser = Page()
    parser.feed(text)
    parser.close()
    assert parser.open == [parser.root]  # every element closed
    return json.loads((out / "report.json").read_text()), parser.root, text


def test_an_exported_ensemble_is_scored_as_the_container_does_and_reported_in_one_page(tmp_path):
    weights = make_tiny_ensemble(tmp_path / "weights", offsets=OFFSETS, thresholds=THRESHOLDS)
    report, page, text = evaluate(tmp_path, weights)
    data = load([DataSource(MANIFEST)])
    probs = tiny_model_probs(data.images, OFFSETS)
    atypical, confidence = vote(probs, THRESHOLDS)
    labels = data.labels.astype(bool)
    assert 0 < atypical.sum() < len(atypical)  # the fixture gives both calls, and errors
    vote_cell = report["models"]["vote (4 folds)"]["all"]
    assert vote_cell["confusion"] == {"tn": int((~labels & ~atypical).sum()), "fp": int((~labels & atypical).sum()),
                                      "fn": int((labels & ~atypical).sum()), "tp": int((labels & atypical).sum())}
    assert report["sources"][0]["folds"] == ["fold0", "fold1", "fold2", "fold3"]
    assert report["sources"][0]["thresholds"] == THRESHOLDS and report["sources"][0]["tta"] == "none"

    # self-contained: nothing fetched, every image embedded
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not find(page, "link") and not find(page, "script")
    images = find(page, "img")
    assert images and all(i["attrs"]["src"].startswith("data:image/png;base64,") for i in images)
    # the per-domain table: a column for all and for each domain, a row per fold model and the vote, intervals
    domains = sorted(set(data.domains))
    table = find(page, "table")[0]
    count = lambda keep: f"{keep.sum()} patches, {labels[keep].sum()} atypical"  # noqa: E731
    assert [th["text"] for th in find(table, "th")] == ["model", "all" + count(labels == labels), *(
        d + count(data.domains == d) for d in domains)]
    rows = find(find(table, "tbody")[0], "tr")
    assert [r["children"][0]["text"] for r in rows] == ["fold0", "fold1", "fold2", "fold3", "vote (4 folds)"]
    assert all(len(r["children"]) == 2 + len(domains) for r in rows)
    ba = report["models"]["vote (4 folds)"]["all"]
    assert rows[4]["children"][1]["text"] == (f"{ba['balanced_accuracy']:.3f}{ba['balanced_accuracy_ci'][0]:.3f}–"
                                              f"{ba['balanced_accuracy_ci'][1]:.3f}")
    # the two plots, embedded
    plots = [find(f, "img")[0]["attrs"]["alt"] for f in find(page, "figure") if f["attrs"].get("class") in ("roc",
                                                                                                              "cm")]
    assert plots == ["ROC curves", "confusion matrices"]

    # the gallery: per domain the vote's most confident error (--gallery 1): the patch, its true label, the
    # ensemble's confidence and each fold's probability against its threshold, ✓ when that fold is right
    sections = find(page, "section", "domain")
    assert [s["children"][0]["text"].split()[0] for s in sections] == domains
    margin = np.where(atypical, confidence - np.mean(THRESHOLDS), np.mean(THRESHOLDS) - confidence)
    for section, domain in zip(sections, domains):
        wrong = np.flatnonzero((atypical != labels) & (data.domains == domain))
        cards = find(section, "figure", "card")
        assert len(cards) == min(1, len(wrong)) and f"{len(wrong)} errors of 4 patches" in section["text"]
        if not cards:
            continue
        i = wrong[np.argmax(margin[wrong])]
        card = cards[0]
        assert card["attrs"]["class"] == f"card {'fn' if labels[i] else 'fp'}"
        assert find(card, "img")[0]["attrs"]["src"].startswith("data:image/png;base64,")
        truth, called = ("atypical" if x else "normal" for x in (labels[i], atypical[i]))
        assert f"true {truth}, called {called}" in card["text"]
        assert f"P(atypical) {confidence[i]:.3f}" in card["text"]
        folds = [li["text"] for li in find(card, "li")]
        assert len(folds) == 4
        for line, name, p, t in zip(folds, ["fold0", "fold1", "fold2", "fold3"], probs[i], THRESHOLDS):
            assert line.startswith(name) and f"{p:.2f}" in line and f"{t:.2f}" in line
            assert line.endswith("✓" if (p >= t) == labels[i] else "✗")
    assert any(find(s, "figure", "card") for s in sections)


def test_two_ensembles_are_compared_with_a_paired_interval(tmp_path):
    a = make_tiny_ensemble(tmp_path / "a", offsets=OFFSETS, thresholds=THRESHOLDS)
    b = make_tiny_ensemble(tmp_path / "b", tta="d4")
    report, page, text = evaluate(tmp_path, a, b)
    assert [s["key"] for s in report["sources"]] == ["A", "B"] and report["sources"][1]["tta"] == "d4"
    assert len(report["models"]) == 10
    va, vb = report["models"]["A: vote (4 folds)"]["all"], report["models"]["B: vote (4 folds)"]["all"]
    diff = report["comparison"]["vote A - vote B"]["all"]
    assert diff["difference"] == va["balanced_accuracy"] - vb["balanced_accuracy"]
    assert diff["ci"][0] <= diff["difference"] <= diff["ci"][1]
    assert "paired difference" in (tmp_path / "report" / "report.md").read_text()
    assert "vote A - vote B" in [td["text"] for td in find(page, "td")]
    assert [h["text"].split(":")[0] for h in find(page, "h2") if "confident errors" in h["text"]] == ["A", "B"]


def test_a_folder_that_is_no_model_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert amf(["evaluate", str(tmp_path / "empty"), "--manifest", str(MANIFEST), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amf evaluate: error: ") and "ensemble.json" in err and len(err.splitlines()) == 1
