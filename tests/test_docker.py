"""The container images (docker/*.Dockerfile), as far as they can be checked without building them.

They install what pyproject.toml declares: the extras they name exist, the versions they pin are in
its ranges, the runtime's torch is the one the tests run on, and the operator's image, without the ML
stack, really runs the operator (checked here by hiding the rest of siked's requirements from it).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
OPERATOR, RUNTIME = REPO / "docker" / "operator.Dockerfile", REPO / "docker" / "runtime.Dockerfile"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the RUN instructions."""
    out = []
    for instruction, args in instructions(dockerfile):
        if instruction == "RUN":
            for command in re.split(r"&&|;", args):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    out.append(words[2:])
    return out


def pins(dockerfile: Path) -> dict[str, str]:
    """Package -> the exact version the image installs."""
    found = {}
    for words in pip_installs(dockerfile):
        for word in words:
            if "==" in word:
                name, version = word.split("==")
                found[canonicalize_name(name)] = version
    return found


def requirements(*extras: str) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    reqs += [Requirement(r) for extra in extras for r in PYPROJECT["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in reqs}


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_version(dockerfile):
    [base] = [args for instruction, args in instructions(dockerfile) if instruction == "FROM"]
    _, _, tag = base.partition(":")
    assert re.match(r"^\d+\.\d+\.\d+-", tag), f"{dockerfile.name}: FROM {base} is not pinned to a version"


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_every_extra_installed_exists(dockerfile):
    named = [m.group(1) for words in pip_installs(dockerfile) for w in words if (m := re.match(r"^\.\[(.+)\]$", w))]
    extras = {e.strip() for group in named for e in group.split(",")}
    assert extras <= set(PYPROJECT["optional-dependencies"]), extras
    if dockerfile == RUNTIME:
        assert extras == {"vllm"}


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_pins_are_within_pyproject(dockerfile):
    allowed = requirements(*PYPROJECT["optional-dependencies"])
    for name, version in pins(dockerfile).items():
        assert name in allowed, f"{dockerfile.name} installs {name}, which siked does not require"
        assert allowed[name].specifier.contains(version), f"{name}=={version} is outside {allowed[name]}"


def test_runtime_image_has_the_tested_torch_and_vllm():
    tested = re.search(r"torch==([\w.]+)", (REPO / "install.sh").read_text()).group(1)
    assert pins(RUNTIME)["torch"] == tested
    assert "vllm" in pins(RUNTIME)
    assert any(w == ".[vllm]" for words in pip_installs(RUNTIME) for w in words)
    assert [a for i, a in instructions(RUNTIME) if i == "USER"] == ["10001:10001"]


def test_operator_image_is_siked_without_its_ml_stack():
    installs = pip_installs(OPERATOR)
    assert ["--no-deps", "."] in installs
    pinned = set(pins(OPERATOR))
    assert set(requirements("operator")) - set(requirements()) <= pinned  # all of the operator extra
    assert not {"torch", "transformers", "vllm", "trl", "peft", "numpy"} & pinned
    assert [a for i, a in instructions(OPERATOR) if i == "USER"] == ["65532:65532"]  # the chart's runAsUser


# A reconcile pass over a local store, in a process where siked's other requirements cannot be imported.
OPERATOR_PASS = textwrap.dedent("""
    import sys, tempfile, logging
    from datetime import datetime, UTC
    from pathlib import Path
    import yaml

    class Hidden:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"not in the operator image: {name}")

    sys.meta_path.insert(0, Hidden())

    import siked_operator.handlers, siked_operator.main
    from siked_operator.config import Config
    from siked_operator.reconcile import reconcile_run
    from siked_operator.status import Failure

    class Kube:
        created = []
        def create_job(self, namespace, job):
            self.created.append(job["metadata"]["name"])
            return True
        def job_failure(self, namespace, name):
            return Failure()

    smoke = yaml.safe_load(Path("examples/smoke.yaml").read_text())
    run = {**smoke, "metadata": {"name": "smoke", "namespace": "default", "uid": "u", "generation": 1}}
    config = Config(storage_uri=Path(tempfile.mkdtemp()).as_uri())
    kube = Kube()
    result = reconcile_run(run, [], config, kube, datetime.now(UTC), logging.getLogger())
    print(sorted(kube.created), result.patch["phase"])
""")


def test_the_operator_runs_with_only_what_its_image_installs():
    hidden_dists = set(requirements()) - set(pins(OPERATOR))
    hidden = sorted({top for top, dists in packages_distributions().items()
                     if any(canonicalize_name(d) in hidden_dists for d in dists)})
    assert {"torch", "transformers", "numpy", "sympy"} <= set(hidden)
    script = f"HIDDEN = {hidden!r}\n" + OPERATOR_PASS
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["['smoke-baseline',", "'smoke-teacher']", "Pending"]
