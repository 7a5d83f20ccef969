"""The host's pip configuration as volume mounts for a podman or buildah build (build.sh runs it).

A build's ``RUN pip install`` does not see the host's pip configuration (index, CA bundle, find-links). This
prints one mount per line (``SRC:DST[:ro]``) that gives it to the RUN steps: the host's config files and
PIP_* variables merged into one pip.conf, and the local files and folders it names (CA bundle, find-links
folders, file:// indexes). Nothing may be left in the image: a RUN's mount targets stay in it as empty files
and folders (buildah 1.28), so everything goes under two folders every base has: DIR/tmp on /tmp (the local
paths below /tmp/pip-host, the configuration rewritten to match) and DIR/root on /root (root's home, for
~/.config/pip/pip.conf). Prints nothing when the host has no pip configuration.

    python3 scripts/pip_build_mounts.py DIR     (DIR: a new folder it fills)
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

PREFIX = "/tmp/pip-host"


def pip_settings() -> dict[str, str]:
    """``section.key -> value`` as ``pip config list`` gives them (all files and PIP_* variables)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    items = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        key, sep, value = line.partition("=")
        if sep:
            items[key] = ast.literal_eval(value)
    return items


def merged_config(items: dict[str, str]) -> configparser.RawConfigParser:
    """One configuration: the files' sections, with PIP_* variables (which win over every file) in [global]."""
    env = {k.split(".", 1)[1]: v for k, v in items.items() if k.startswith(":env:.")}
    env.pop("config-file", None)
    conf = configparser.RawConfigParser()
    for key, value in items.items():
        section, _, name = key.partition(".")
        if section == ":env:" or name in env:
            continue
        if not conf.has_section(section):
            conf.add_section(section)
        conf.set(section, name, value)
    if env and not conf.has_section("global"):
        conf.add_section("global")
    for name, value in env.items():
        conf.set("global", name, value)
    return conf


def relocate_local_paths(conf: configparser.RawConfigParser) -> set[str]:
    """Rewrite values that are existing absolute paths or file:// URLs to lie below PREFIX; return the host
    paths to mount. A file:// index (.../simple) links to files beside it, so its parent is mounted."""
    mounts = set()
    for section in conf.sections():
        for name, value in conf.items(section):
            tokens = []
            for token in value.split():
                url = token.startswith("file:")
                path = unquote(urlparse(token).path) if url else token
                if os.path.isabs(path) and os.path.exists(path):
                    path = os.path.realpath(path)
                    simple_index = name in ("index-url", "extra-index-url") and os.path.basename(path) == "simple"
                    mounts.add(os.path.dirname(path) if simple_index else path)
                    token = "file://" + quote(PREFIX + path) if url else PREFIX + path
                tokens.append(token)
            conf.set(section, name, " ".join(tokens))
    return mounts


def main(top: Path) -> None:
    conf = merged_config(pip_settings())
    if not conf.sections():
        return
    mounts = relocate_local_paths(conf)
    (top / "tmp").mkdir(parents=True)
    (top / "tmp").chmod(0o1777)
    (top / "root" / ".config" / "pip").mkdir(parents=True)
    (top / "root").chmod(0o700)
    with open(top / "root" / ".config" / "pip" / "pip.conf", "w") as out:
        conf.write(out)
    print(f"{top}/tmp:/tmp")
    print(f"{top}/root:/root")
    for path in sorted(mounts):
        if not any(path.startswith(other + "/") for other in mounts):  # a mounted folder holds it already
            print(f"{path}:{PREFIX}{path}:ro")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
