"""What a new user hit (issue 31): each rough edge of a first study, checked where it was found."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from inflang.cli import app

runner = CliRunner()
ROOT = Path(__file__).parent.parent


def test_the_readme_shows_the_quickstart_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A study"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    shown = yaml.safe_load(block.group(1))
    assert shown == yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
