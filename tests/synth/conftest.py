"""A small synthetic ICS, generated once per test session."""

from __future__ import annotations

import pytest
from synth_helpers import FRAMEWORK_FILE, PEOPLE, SEED, SynthRun

from sharedcare.governance.framework import Framework, load_framework
from sharedcare.synth import generate


@pytest.fixture(scope="session")
def framework() -> Framework:
    return load_framework(FRAMEWORK_FILE)


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory, framework: Framework) -> SynthRun:
    root = tmp_path_factory.mktemp("run")
    return SynthRun(root, generate(root, PEOPLE, SEED, framework=framework))
