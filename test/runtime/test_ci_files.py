"""The forge CI files (.github/workflows/ci.yml, .gitlab-ci.yml), checked offline: valid against the schemas that
check-jsonschema ships, no zizmor finding of medium severity or above on the workflow, every action pinned to a
full commit hash with its version beside it, and every step a call of a script in this repository that our own
CI (.ci/run) calls too, so that no step is written twice. Each check is also shown failing on a broken copy."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
GITLAB = ROOT / ".gitlab-ci.yml"
SCHEMAS = {WORKFLOW: "vendor.github-workflows", GITLAB: "vendor.gitlab-ci"}
# Top-level keys of .gitlab-ci.yml that are not jobs.
GITLAB_KEYWORDS = {"default", "include", "stages", "variables", "workflow", "spec", "image", "services", "cache",
                   "before_script", "after_script"}
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}\s+#\s*v\d+(\.\d+)*$")


def tool(name: str) -> str:
    """A command-line tool of the test extra, from this interpreter's venv."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed: pip install -e '.[test]'"
    return str(path)


def schema_check(path: Path, schema: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, str(path)], capture_output=True,
                          text=True, timeout=120)


def zizmor_findings(path: Path) -> list[str]:
    """zizmor's findings of medium severity or above, offline, with no configuration or ignore comment honoured."""
    proc = subprocess.run([tool("zizmor"), "--offline", "--no-config", "--no-ignores", "--min-severity", "medium",
                           "--format", "json", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), proc.stderr  # zizmor exits non-zero on findings: the JSON tells what they are
    return [f"{f['ident']} ({f['determinations']['severity']}): {f['desc']}" for f in json.loads(proc.stdout)]


def github_steps(text: str) -> list[dict]:
    return [step for job in yaml.safe_load(text)["jobs"].values() for step in job.get("steps", [])]


def commands(path: Path, text: str) -> list[str]:
    """The shell commands of a CI file: each `run:` of the workflow, each `script:` line of a GitLab job."""
    if path.name.endswith(".gitlab-ci.yml"):
        jobs = {name: job for name, job in yaml.safe_load(text).items() if name not in GITLAB_KEYWORDS}
        return [line for job in jobs.values() for line in job.get("script", [])]
    return [step["run"] for step in github_steps(text) if "run" in step]


def called_script(command: str) -> str | None:
    """The repository script a command runs (`bash SCRIPT ARGS...` or `SCRIPT ARGS...`), or None."""
    words = shlex.split(command) if "\n" not in command.strip() else []
    if words[:1] == ["bash"]:
        words = words[1:]
    if not words or words[0].startswith("/") or not (ROOT / words[0]).is_file():
        return None
    return Path(words[0]).as_posix()


def step_problems(path: Path, text: str) -> list[str]:
    """Steps that are not one call of a script in this repository."""
    return [f"{path.name}: {command!r} does not call a script of this repository" for command in commands(path, text)
            if called_script(command) is None]


def pin_problems(text: str) -> list[str]:
    """`uses:` lines whose action is not pinned to a full commit hash with its version in a comment."""
    uses = [line.split("uses:", 1)[1].strip() for line in text.splitlines() if re.match(r"\s*(-\s+)?uses:", line)]
    assert len(uses) == sum("uses" in step for step in github_steps(text))
    return [f"uses: {u!r} is not pinned to a full commit hash with its version in a comment" for u in uses
            if not PINNED.match(u)]


def scripts_ci_runs() -> set[str]:
    """The scripts .ci/run calls, and those they call in turn (under .ci/)."""
    found, todo = set(), [".ci/run"]
    while todo:
        text = (ROOT / todo.pop()).read_text()
        for script in re.findall(r"(?:^|\s)(?:bash\s+)?(\.ci/[\w-]+)", text, re.M):
            if script not in found and (ROOT / script).is_file():
                found.add(script)
                todo.append(script)
    return found


@pytest.mark.parametrize("path", [WORKFLOW, GITLAB], ids=lambda p: p.name)
def test_the_ci_file_is_valid_against_its_schema_and_a_broken_copy_is_not(path, tmp_path):
    proc = schema_check(path, SCHEMAS[path])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A misspelt key in the first job (`runs-on`, `script`): neither schema allows it.
    broken = tmp_path / path.name
    key = {WORKFLOW: "runs-on", GITLAB: "script"}[path]
    broken.write_text(path.read_text().replace(f"  {key}:", f"  {key}s:", 1))
    proc = schema_check(broken, SCHEMAS[path])
    assert proc.returncode != 0 and "runtime-tests" in proc.stdout and f"{key}s" in proc.stdout, proc.stdout

def test_zizmor_finds_nothing_of_medium_severity_or_above_and_catches_an_unpinned_action(tmp_path):
    assert zizmor_findings(WORKFLOW) == []
    broken = tmp_path / "ci.yml"
    broken.write_text(re.sub(r"(actions/checkout)@[0-9a-f]{40}", r"\1@v7", WORKFLOW.read_text(), count=1))
    assert any(f.startswith("unpinned-uses") for f in zizmor_findings(broken))


def test_every_action_is_pinned_to_a_commit_hash_with_its_version():
    text = WORKFLOW.read_text()
    assert sum("uses" in step for step in github_steps(text)) >= 3
    assert pin_problems(text) == []
    no_version = re.sub(r"(actions/setup-python@[0-9a-f]{40})\s+#.*", r"\1", text, count=1)
    problems = pin_problems(no_version)
    assert len(problems) == 1 and "actions/setup-python@" in problems[0], problems
    short_hash = re.sub(r"(actions/upload-artifact@[0-9a-f]{12})[0-9a-f]+", r"\1", text, count=1)
    assert len(pin_problems(short_hash)) == 1


def test_the_workflows_permissions_and_checkouts():
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc["permissions"] == {"contents": "read"}
    checkouts = [s for s in github_steps(WORKFLOW.read_text()) if s.get("uses", "").startswith("actions/checkout@")]
    assert checkouts and all(s["with"]["persist-credentials"] is False for s in checkouts)
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(on)


@pytest.mark.parametrize("path", [WORKFLOW, GITLAB], ids=lambda p: p.name)
def test_every_step_calls_a_script_that_our_own_ci_runs_too(path, tmp_path):
    text = path.read_text()
    called = {called_script(c) for c in commands(path, text)}
    assert step_problems(path, text) == [] and len(called) >= 3
    assert called <= scripts_ci_runs(), f"{path.name} calls scripts that .ci/run does not: {called - scripts_ci_runs()}"
    assert {".ci/runtime-tests", ".ci/full-tests", ".ci/image"} <= called
    # The check fails on an inline command, and on a script that is not in the repository.
    for command in ("python -m pytest -q", "bash .ci/no-such-script"):
        broken = re.sub(r"bash \.ci/full-tests", command, text, count=1)
        assert step_problems(path, broken) == [f"{path.name}: {command!r} does not call a script of this repository"]
