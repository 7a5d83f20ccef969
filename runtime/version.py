"""The release version of amf-mtl, defined here once: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and
``amf --version``, process.py's first log line, ``ensemble.json``'s provenance and the image's
``org.opencontainers.image.version`` label all name it. A change of the shipped weights is a new version
(CHANGELOG.md)."""

__version__ = "1.0.0"
