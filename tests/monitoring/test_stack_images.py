"""The pipeline image (stages/Dockerfile: the trainer and the MLflow server), its build context, and the
Makefile's stack targets. No Docker engine runs here: the image's install step runs natively instead."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.support.dockerfiles import instructions as dockerfile_instructions
from tests.support.processes import REPO_ROOT, require_tool

DOCKERFILE = REPO_ROOT / "stages" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE)


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Docker's rule, for the patterns this repository uses: a pattern excludes what it matches and
    everything below it; `**/` matches any number of directories."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in dockerignore_patterns():
        assert not pattern.startswith("!"), "exceptions are not modelled here"
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern[3:]):
                return True
    return False


def make_variable(name: str) -> str:
    """A Makefile variable as make itself expands it in this repository."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", f"--eval=print-{name}: ; @echo $({name})", f"print-{name}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def required_uv() -> str:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["uv"]["required-version"]


def test_the_base_image_is_pinned():
    (base,) = [args for keyword, args in instructions() if keyword == "FROM"]
    _, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), base


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, REPO_ROOT / "api" / "Dockerfile"], ids=["stages", "api"])
def test_uv_s_version_has_one_home_in_pyproject(dockerfile):
    """The Makefile and both images read `[tool.uv] required-version`; none writes a version of its own."""
    assert required_uv().startswith("==")
    assert f"=={make_variable('UV_VERSION')}" == required_uv()
    (install,) = [args for keyword, args in dockerfile_instructions(dockerfile)
                  if keyword == "RUN" and "pip install" in args and "uv" in args]  # fmt: skip
    # The install line, run by a shell in the image's working directory after `COPY pyproject.toml`.
    command = install.replace("pip install --no-cache-dir", "printf %s")
    printed = subprocess.run(["sh", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert printed.stdout == f"uv{required_uv()}"
    for path in (REPO_ROOT / "Makefile", REPO_ROOT / ".ci" / "run", dockerfile):
        assert required_uv().removeprefix("==") not in path.read_text(), f"{path.name} writes uv's version"


def test_the_served_model_is_the_one_params_yaml_names_in_the_makefile_compose_and_the_image():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["mlflow"]
    expected = {"MODEL_NAME": params["model_name"], "MODEL_ALIAS": params["aliases"]["production"]}
    assert {name: make_variable(name) for name in expected} == expected
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    environment = compose["services"]["api"]["environment"]
    assert {name: environment[name] for name in expected} == expected
    image = dockerfile_instructions(REPO_ROOT / "api" / "Dockerfile")
    build_args = {
        args.split("=", 1)[0]: args.split("=", 1)[1]
        for keyword, args in image
        if keyword == "ARG" and "=" in args
    }
    environment = " ".join(args for keyword, args in image if keyword == "ENV").split()
    for name, value in expected.items():
        assert build_args.get(name) == value, f"api/Dockerfile ARG {name}"
        assert f"{name}=${{{name}}}" in environment, f"api/Dockerfile ENV {name}"


def test_installs_from_the_lock_file_without_the_dev_group():
    runs = [args for keyword, args in instructions() if keyword == "RUN" and "uv sync" in args]
    assert len(runs) == 1
    assert "--frozen" in runs[0] and "--no-group dev" in runs[0]


def test_the_image_runs_as_a_non_root_user_and_reproduces_the_pipeline_by_default():
    (user,) = [args for keyword, args in instructions() if keyword == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    (command,) = [args for keyword, args in instructions() if keyword == "CMD"]
    assert command == '["dvc", "repro"]'


def test_everything_the_image_copies_is_in_the_repository_and_in_the_build_context():
    sources = copied_sources()
    assert "stages/" in sources and "dvc.yaml" in sources and "uv.lock" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: .dockerignore leaves it out of the build context"


def copied_sources() -> list[str]:
    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and "--from" not in args:
            *copied, _destination = shlex.split(args)
            sources += copied
    return sources


def test_the_image_holds_every_input_of_dvc_repro():
    """Each dependency of each stage is either copied into the image or made by an earlier stage, and the
    data source is a file inside an installed package: otherwise `dvc repro` would fail in the trainer."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())

    def resolved(path: str) -> str:
        return re.sub(r"\$\{paths\.(\w+)\}", lambda match: params["paths"][match.group(1)], path)

    def names(entries: list) -> list[str]:
        return [resolved(next(iter(entry)) if isinstance(entry, dict) else entry) for entry in entries]

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    made = {
        out
        for stage in stages.values()
        for key in ("outs", "metrics", "plots")
        for out in names(stage.get(key, []))
    }
    copied = [source.rstrip("/") for source in copied_sources()]
    for name, stage in stages.items():
        for dep in names(stage.get("deps", [])):
            inside = any(dep == source or dep.startswith(f"{source}/") for source in copied)
            assert inside or any(dep == out or dep.startswith(f"{out}/") for out in made), (
                f"{name} needs {dep}"
            )
        module = re.fullmatch(r"python -m (stages\.\w+)", stage["cmd"])
        assert module and (REPO_ROOT / (module.group(1).replace(".", "/") + ".py")).is_file(), stage["cmd"]
    assert str(params["data"]["source"]).startswith("package:"), "a repository data file is not copied"


@pytest.mark.parametrize("path", [".env", ".git/config", ".venv/bin/python", "mlflow.db", "mlruns/1/meta.yaml",
                                  "stages/__pycache__/train.cpython-311.pyc", ".dvc/cache/files/md5/ab"])  # fmt: skip
def test_secrets_and_local_state_stay_out_of_the_build_context(path):
    assert ignored(path)


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_the_image_s_packages_cover_every_import_of_the_stages_and_the_mlflow_server():
    """What `uv sync --frozen --no-group dev` installs must be enough: a stage that imports a dev-only
    package would pass every native test and fail only inside the image."""
    exported = subprocess.run(
        [require_tool("uv"), "export", "--frozen", "--no-group", "dev", "--no-hashes", "--no-header",
         "--no-annotate", "--format", "requirements-txt"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    installed = {normalized(re.split(r"[=<>; \[]", line, maxsplit=1)[0])
                 for line in exported.stdout.splitlines() if line and not line.startswith(("#", " ", "-"))}  # fmt: skip
    assert {"dvc", "mlflow", "psycopg2-binary"} <= installed, "the trainer and the server need these"

    # The repository's own packages the image copies (stages/, and the api/ modules the stages use).
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", (REPO_ROOT / "stages" / "Dockerfile").read_text(), re.M))
    assert "stages" in copied
    modules = set()
    for path in (path for package in sorted(copied) for path in (REPO_ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - copied - {"__future__"}
    assert "tests" not in third_party, "stages must not import the tests"
    providers = importlib.metadata.packages_distributions()
    missing = {module for module in third_party
               if not {normalized(dist) for dist in providers.get(module, [])} & installed}  # fmt: skip
    assert missing == set(), "imported by the image's code but not installed in it"


@pytest.mark.parametrize("target", ["up", "down", "logs"])
def test_the_stack_targets_refuse_to_run_without_dot_env(tmp_path, target):
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    result = subprocess.run(
        ["make", "--no-print-directory", target], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert ".env is missing" in result.stderr and ".env.example" in result.stderr
    assert "docker" not in result.stdout, "the check must come before compose runs"


def test_the_base_image_is_pinned_by_tag_and_digest():
    """The form only: a wrong digest passes every offline check. A tag can be re-pushed; tag@digest
    cannot, and still says which version it is."""
    bases = [argument.split()[0] for keyword, argument in instructions() if keyword == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
