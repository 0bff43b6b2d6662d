"""The package builds without a warning of ours: setuptools reads pyproject.toml as it is meant
to be (the licence as an SPDX expression, not the deprecated table, which it warned about on
every install)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.mounting import ROOT

BUILD_METADATA = """
import sys, warnings
import setuptools.build_meta as backend
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    name = backend.prepare_metadata_for_build_wheel(sys.argv[1])
for w in caught:
    print(f"WARNING {w.category.__name__}: {w.message}")
print(name)
"""


def test_metadata_builds_without_warnings(tmp_path: Path) -> None:
    # the same backend and setuptools as scripts/install.sh (--no-build-isolation)
    done = subprocess.run(
        [sys.executable, "-c", BUILD_METADATA, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    assert not warnings, "\n".join(warnings)
    dist_info = tmp_path / done.stdout.splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: shtab==1.13.0" in metadata
