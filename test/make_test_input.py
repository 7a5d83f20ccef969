"""Build test/input/ in Grand Challenge layout from 16 AMi-Br test-split patches.

    python test/make_test_input.py [../shared/data/amibr/manifest.csv]

Picks 2 atypical + 2 normal patches per domain (seeded), writes a 16-page RGB deflate TIFF at
test/input/images/stacked-histopathology-roi-cropouts/stack.tif, test/input/inputs.json, and the chosen
files with their labels to test/input_labels.csv. test/output/expected_output.json is regenerated from the
shipped weights with `python process.py --input test/input --output test/output` (then renamed).
"""

import csv
import json
import random
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SOCKET = "stacked-histopathology-roi-cropouts"

manifest = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent.parent / "shared/data/amibr/manifest.csv")
rows = [r for r in csv.DictReader(manifest.open()) if r["split"] == "test"]
random.seed(2025)
picked = []
for domain in sorted({r["domain"] for r in rows}):
    for label in ("atypical", "normal"):
        picked += random.sample([r for r in rows if r["domain"] == domain and r["label"] == label], 2)
random.shuffle(picked)
folder = HERE / "input" / "images" / SOCKET
folder.mkdir(parents=True, exist_ok=True)
pages = [Image.open(manifest.parent / r["file"]).convert("RGB") for r in picked]
pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:], compression="tiff_deflate")
(HERE / "input" / "inputs.json").write_text(json.dumps([{
    "file": None, "image": {"name": "stack.tif"}, "value": None,
    "interface": {"slug": SOCKET, "kind": "Image", "super_kind": "Image",
                  "relative_path": f"images/{SOCKET}", "example_value": None},
}], indent=2) + "\n")
with (HERE / "input_labels.csv").open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["page", "file", "label", "domain"])
    w.writerows([i, r["file"], r["label"], r["domain"]] for i, r in enumerate(picked))
print(f"{len(pages)} pages -> {folder / 'stack.tif'}")
