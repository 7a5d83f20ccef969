"""Docs that run: every command in a ```bash block of README.md, weights/README.md and docs/*.md runs here, on the
test fixtures, or is one of EXCEPTIONS below with its reason.

How a command written for the real data runs on the fixtures, decided in one place (STAND_INS, SMALL):
- a data set the docs name is replaced by the fixture standing in for it (STAND_INS), and a path under /tmp by one
  under the scratch folder;
- each ``amf`` command gets SMALL's options appended (argparse keeps an option's last value): one training step
  of a small backbone per fold, no accuracy guard for 1-step models, fewer resamples; and a run trains its first
  FOLDS folds only (LODO over the three stand-in datasets would be seven);
- the files run in DOCS's order, their blocks in order, in one scratch folder that holds the repository's
  ``test`` (a link) and a copy of ``weights/``, so a command finds the runs the commands before it made (the
  model card's ``--resume`` finds the README's run finished), and nothing is written into the checkout.

Why not pytest-codeblocks, pytest-markdown-docs or mktestdocs: they run a block as written (the last two: Python
fences only), each shell block in a shell of its own. Written, the commands name the real data set and
50-epoch schedules, and each ``amf`` process would import torch again (6 to 14 s); the rewriting above and
running ``amf`` in this process (cli.main) are the two things this runner adds to reading fences, which is
a dozen lines.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MULTI_FIXTURE, ROOT

from cli.main import main as amf

DOCS = [ROOT / "README.md", ROOT / "weights" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

STAND_INS = {  # a data set the docs name -> the fixture standing in for it
    "../shared/data/amibr/manifest.csv": MULTI_FIXTURE / "amibr.csv",  # 16 train + 4 test AMi-Br patches
    "midog25/MIDOG25_atypical.csv": MULTI_FIXTURE / "midog25" / "midog25.csv",  # MIDOG 2025's layout, 8 rows
    "omg-octo/omg_octo.csv": MULTI_FIXTURE / "omg-octo.csv",  # OMG-Octo's layout, 4 rows
}
SMALL = {  # amf command -> options appended: the same steps, at the fixtures' size
    "train": ["--max-steps", "1", "--limit-val-batches", "1", "--batch-size", "4", "--backbone", "resnetv2_18",
              "--jobs", "1"],  # --jobs N's fold processes: test_side_by_side.py
    "export": ["--no-guard", "--calibration-patches", "16"],  # 1-step models: int8 moves their BA on 4 patches
                                                              # by 0.25 (the guard's tests: test_quantize.py)
    "evaluate": ["--bootstrap", "100"],
}
FOLDS = 2
EXCEPTIONS = {  # a command (regular expression, from its start) -> why it does not run here
    r"python3 -m venv |\.venv/bin/pip ": "installs an environment: .ci/run installs both from scratch (README "
                                         "commands 1 and 2)",
    r"(\w+=\S* )*(\./build\.sh|test/run_container\.sh|\.ci/stand-in-base)": "builds or runs the image (root, "
                                                                           "buildah): .ci/container does both",
    r"(\w+=\S* )*scripts/(reproduce_default|reproduce_e25_rounds|ablations)\.sh": "a whole schedule of "
        "50-epoch (or 3-epoch) trainings, CPU-hours; its steps are the amf commands run here",
    r"\.venv/bin/python bench/": "a benchmark: it prints figures measured on the real data set, minutes each",
    r"\.venv/bin/python -m pytest": "this test suite",
    r"(\w+=\$\()?sbatch ": "a SLURM job (or its id, kept for the next one's dependency): .ci/slurm submits it to "
                          "a test cluster",
}


def blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each command of the file's ```bash blocks, continuation lines joined."""
    out, fence, command, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = not fence and line.strip() in ("```bash", "```sh", "```shell")
            continue
        if fence:
            start = start or number
            command += (line[:-1] if line.endswith("\\") else line).strip() + " "
            if not line.endswith("\\"):
                if command.strip() and not command.lstrip().startswith("#"):
                    out.append((start, command.strip()))
                command, start = "", 0
    return out


def exception(words: list[str]) -> str | None:
    line = " ".join(words)
    return next((why for pattern, why in EXCEPTIONS.items() if re.match(pattern, line)), None)


def commands(line: str, env: dict[str, str]) -> list[list[str]]:
    """The simple commands of a line (split at ``&&`` and ``;``, comments dropped), ``$NAME`` expanded from
    ``env`` and the line's own assignments, which go into ``env``; a name set from a command's output
    (``jid=$(sbatch ...)``, an exception) stays as written."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    out, words = [], []
    for word in [*lexer, ";"]:
        if word in (";", "&&"):
            if words and all(re.fullmatch(r"\w+=.*", w) for w in words):
                env.update(w.split("=", 1) for w in words)
            elif words:
                out.append(words)
            words = []
        else:
            assert word != "|", f"a pipe: run it as separate commands, or add it to EXCEPTIONS: {line}"
            words.append(re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), word))
    return out


def stand_in(words: list[str], scratch: Path) -> list[str]:
    words = [str(STAND_INS.get(w, w)) for w in words]
    return [str(scratch / w[len("/tmp/"):]) if w.startswith("/tmp/") else w for w in words]


def run(words: list[str], scratch: Path) -> None:
    program, *args = words
    if program in ("amf", ".venv/bin/amf"):
        extra = SMALL.get(args[0], []) if args else []
        code = amf([*args, *extra])
        assert code == 0, f"amf exited {code}"
    elif program == ".venv/bin/python" and args and args[0].endswith(".py"):
        subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], check=True, cwd=scratch, timeout=120,
                       capture_output=True)
    elif program == "cat":
        subprocess.run(words, check=True, cwd=scratch, capture_output=True)
    else:
        pytest.fail(f"no way to run {program!r}: make it runnable here or add it to EXCEPTIONS with its reason")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The folder every documented command runs in, shared by the files in order."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "test").symlink_to(ROOT / "test")
    shutil.copytree(ROOT / "weights", folder / "weights")
    return folder


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_command_in_the_docs_runs_on_the_fixtures(doc, scratch, monkeypatch):
    from training import train

    make_folds = train.make_folds
    monkeypatch.setattr(train, "make_folds", lambda *args, **kwargs: make_folds(*args, **kwargs)[:FOLDS])
    monkeypatch.chdir(scratch)
    env: dict[str, str] = {}
    for number, line in blocks(doc):
        for words in commands(line, env):
            if exception(words):
                continue
            try:
                run(stand_in(words, scratch), scratch)
            except (AssertionError, subprocess.CalledProcessError, SystemExit) as exc:
                detail = getattr(exc, "stderr", b"") or b""
                pytest.fail(f"{doc.name}:{number}: {shlex.join(words)}\n{exc}\n{detail.decode()[-2000:]}")


def test_the_runner_reads_blocks_expands_names_and_knows_its_exceptions(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n```bash\n# a comment\nA=one; B=two\namf data --manifest $A \\\n    --split ${B}\n"
                   "./build.sh --cpu\n```\n```python\nprint('not a command')\n```\n")
    env: dict[str, str] = {}
    lines = blocks(doc)
    assert lines == [(4, "A=one; B=two"), (5, "amf data --manifest $A --split ${B}"), (7, "./build.sh --cpu")]
    assert [c for _, line in lines for c in commands(line, env)] == [
        ["amf", "data", "--manifest", "one", "--split", "two"], ["./build.sh", "--cpu"]]
    assert exception(["./build.sh", "--cpu"]) and exception(["IMAGE=x", "test/run_container.sh"])
    submitted = commands("jid=$(sbatch --parsable a.sbatch); sbatch --dependency=afterok:$jid b.sbatch", env)
    assert submitted[1][1] == "--dependency=afterok:$jid" and all(exception(c) for c in submitted)
    assert not exception(["amf", "train"])
