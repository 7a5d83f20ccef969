"""Write an image lock's CycloneDX bill of materials (scripts/lock.sh runs it, with cyclonedx-python-lib).

    python scripts/sbom.py LOCK PIP_REPORT OUT.cdx.json

PIP_REPORT is ``pip install --dry-run --report`` of LOCK for the image's platform: one component per locked
package with the sha256 of the wheel pip picks there (which must be one of the lock's hashes), its summary and
licence; the root component is the project (pyproject.toml; its version: runtime/version.py). Reproducible: no
serial number, no timestamp, so an unchanged lock gives the same file. It names no index: cyclonedx-py's
requirements reader records each package's index address, hence this writer.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_labels import version  # noqa: E402
from locks import normalize, read_lock  # noqa: E402


def component(item: dict, lock: dict[str, tuple[str, set[str]]]) -> Component:
    meta = item["metadata"]
    name, version = normalize(meta["name"]), meta["version"]
    digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
    if lock.get(name, ("", set()))[0] != version or digest not in lock[name][1]:
        sys.exit(f"pip picked {name}=={version} (sha256 {digest}), which the lock does not pin")
    licence = (meta.get("license_expression") or meta.get("license") or "").strip()
    return Component(
        name=name, version=version, type=ComponentType.LIBRARY, bom_ref=f"pkg:pypi/{name}@{version}",
        purl=PackageURL("pypi", name=name, version=version), description=meta.get("summary"),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digest)],
        licenses=[LicenseFactory().make_from_string(licence)] if licence and "\n" not in licence else [])


def main(lock_path: str, report_path: str, out: str) -> None:
    lock = read_lock(Path(lock_path).read_text())
    report = json.loads(Path(report_path).read_text())
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    bom = Bom()
    bom.serial_number = None  # reproducible, as cyclonedx-py's --output-reproducible
    bom.metadata.timestamp = None
    root = Component(name=project["name"], version=version(), type=ComponentType.APPLICATION,
                     bom_ref="root", description=project["description"],
                     licenses=[LicenseFactory().make_from_string(project["license"]["text"])])
    bom.metadata.component = root
    parts = sorted((component(item, lock) for item in report["install"]), key=lambda c: c.name)
    missing = set(lock) - {c.name for c in parts}
    if missing:
        sys.exit(f"{report_path}: pip picked nothing for {', '.join(sorted(missing))}")
    for part in parts:
        bom.components.add(part)
    bom.register_dependency(root, parts)
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error:
        sys.exit(f"{out}: not valid CycloneDX 1.6: {error}")
    Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
