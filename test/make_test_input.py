"""Build test/input/ in Grand Challenge layout from 16 AMi-Br test-split patches.

    python test/make_test_input.py [MANIFEST]   # default: ../shared/data/amibr/manifest.csv from the repo root

Picks 2 atypical + 2 normal patches per domain (seeded, shuffled), writes them as a 16-page RGB deflate
TIFF at test/input/images/stacked-histopathology-roi-cropouts/stack.tif, test/input/inputs.json (as GC
writes it), and the pages' files, labels and domains to test/input_labels.csv. The expected output of the
shipped weights, test/output/expected_output.json, is made with
`python process.py --input test/input --output test/output` (then renamed).
"""

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
SOCKET = "stacked-histopathology-roi-cropouts"


def main() -> None:
    manifest = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[1] / "shared/data/amibr/manifest.csv")
    rows = [r for r in csv.DictReader(manifest.open()) if r["split"] == "test"]
    rng = random.Random(2025)
    picked = []
    for domain in sorted({r["domain"] for r in rows}):
        for label in ("atypical", "normal"):
            picked += rng.sample([r for r in rows if r["domain"] == domain and r["label"] == label], 2)
    rng.shuffle(picked)
    pages = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(manifest.parent / r["file"])))[..., :3]
                      for r in picked])
    assert pages.shape == (16, 128, 128, 3) and pages.dtype == np.uint8, pages.shape
    folder = HERE / "input" / "images" / SOCKET
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(pages, isVector=True), str(folder / "stack.tif"), useCompression=True,
                    compressor="Deflate")
    (HERE / "input" / "inputs.json").write_text(json.dumps([{
        "file": None, "image": {"name": "stack.tif"}, "value": None,
        "interface": {"slug": SOCKET, "kind": "Image", "super_kind": "Image",
                      "relative_path": f"images/{SOCKET}", "example_value": None},
    }], indent=2) + "\n")
    with (HERE / "input_labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["page", "file", "label", "domain"])
        writer.writerows([i, r["file"], r["label"], r["domain"]] for i, r in enumerate(picked))
    print(f"{len(pages)} pages -> {folder / 'stack.tif'} ({(folder / 'stack.tif').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
