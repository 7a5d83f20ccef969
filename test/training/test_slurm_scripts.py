"""The job scripts of scripts/slurm/ (docs/cluster.md; .ci/slurm submits them to a real SLURM): each is valid bash,
the training ones start with the requeue-ready header, and none sets a site's value (partition, time, GPUs) other
than as a placeholder sbatch skips."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT

SCRIPTS = ROOT / "scripts" / "slurm"
HEADER = SCRIPTS / "requeue-header.sbatch"
TRAINING = ("train-folds.sbatch", "train-ddp.sbatch")
SITE_OPTIONS = ("--partition", "--time", "--gres")


def sbatch_lines(text: str, prefix: str = "#SBATCH ") -> list[str]:
    return [line.split("#", 2)[-1].removeprefix("SBATCH ").split()[0] for line in text.splitlines()
            if line.startswith(prefix)]


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sbatch")))
def test_each_script_is_valid_bash_and_leaves_site_values_as_placeholders(script):
    text = (SCRIPTS / script).read_text()
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)]).returncode == 0
    assert not [o for o in sbatch_lines(text) if o.startswith(SITE_OPTIONS)], "a site value is set"
    assert {o.split("=")[0] for o in sbatch_lines(text, "##SBATCH ")} >= {"--partition", "--time"}


@pytest.mark.parametrize("script", TRAINING)
def test_the_training_scripts_carry_the_requeue_header_and_resume(script):
    text = (SCRIPTS / script).read_text()
    assert set(sbatch_lines(HEADER.read_text())) <= set(sbatch_lines(text))
    assert re.search(r"^srun .*amf}\" train \"\$@\" .*--resume$", text, re.M | re.S)
