"""The images compose builds, checked without Docker: docker/Dockerfile and what each image installs.

- One Dockerfile. Every image starts from its `base` stage and the two Spark images from its `spark`
  stage, so those layers, pyspark's source build among them, are built once. hadolint lints it.
- Each stage installs docker/requirements-<role>.txt; their pins are requirements.txt's, which stays
  the full local install (`make setup`) and also holds what no image may carry (chDB).
- What an image's command imports is read from the source: the `pulse` subcommand's handler in
  pulse/cli.py (or the notebooks, for JupyterLab), then the import statements of every pulse module
  that loads. Module-level ones run as the command starts; function-level ones may, so they count
  too unless NEVER_RUN says why that image never calls them. Mapped to distributions with this
  venv's metadata, all of it must be installed in the image (dependencies followed as pip would),
  and every pin the image installs must be one of those: nothing unused comes along.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.stack.test_compose import ROOT, services, tool

DOCKERFILE = ROOT / "docker" / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"
IMAGES = ("producer", "processor", "jupyter")
# In requirements.txt for `make setup`, in no image: the in-process ClickHouse of `make demo` and
# the tests. Every service talks HTTP to the ClickHouse server (checked below).
LOCAL_ONLY = {"chdb": "the in-process engine", "chdb-core": "chdb's engine",
              "rich": "the terminal dashboard of `pulse live` and `pulse demo`, which no image runs"}
# Used at run time without an import statement of Pulse's own.
IMPLIED = {
    # ProducerSettings.compression is zstd by default; cramjam is aiokafka's zstd (and lz4) codec.
    "aiokafka": {"cramjam"},
}
# The interpreter of the images (docker/Dockerfile's python base), for environment markers.
IMAGE_PYTHON = "3.12"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- docker/Dockerfile ---------------------------------------------------------------------------

def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and pragmas dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            kind, _, args = line.partition(" ")
            found.append((kind.upper(), args.strip()))
    return found


@dataclass
class Stage:
    name: str
    parent: str
    body: list[tuple[str, str]] = field(default_factory=list)


def stages(dockerfile: Path = DOCKERFILE) -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    # ARGs before the first FROM name the base images; their defaults are what compose builds on.
    defaults: dict[str, str] = {}
    for kind, args in instructions(dockerfile):
        if kind == "ARG" and current is None:
            name, _, default = args.partition("=")
            defaults[name] = default
        elif kind == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(found)}"
            current = found[name] = Stage(name, words[0])
        elif current is not None:
            current.body.append((kind, args))
    return found


def chain(target: str) -> list[Stage]:
    """The stages an image is made of, its root stage first."""
    every = stages()
    lineage = [every[target]]
    while lineage[-1].parent in every:
        lineage.append(every[lineage[-1].parent])
    return lineage[::-1]


def pip_requirement_files(stage: Stage) -> list[str]:
    files = []
    for kind, args in stage.body:
        if kind == "RUN":
            for command in re.findall(r"pip install ([^&;]+)", args):
                files += re.findall(r"-r\s+(\S+)", command)
    return files


def last(target: str, instruction: str) -> str | None:
    value = None
    for stage in chain(target):
        for kind, args in stage.body:
            if kind == instruction:
                value = args
    return value


def command(target: str) -> list[str]:
    cmd = last(target, "CMD")
    assert cmd is not None, f"{target}: no CMD"
    parsed: list[str] = json.loads(cmd)
    return parsed


def test_hadolint() -> None:
    result = subprocess.run([str(tool("hadolint")), "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_builds_every_image_from_the_one_dockerfile() -> None:
    built = {name: s for name, s in services().items() if "build" in s}
    assert set(IMAGES) <= set(built)
    # The store writer runs the processor's image: same target, same image name, built from cache.
    assert {service["build"]["target"] for service in built.values()} == set(IMAGES)
    assert built["store-writer"]["image"] == built["processor"]["image"]
    for name, service in built.items():
        assert Path(service["build"]["context"]) == ROOT, "the images build from the repository root"
        assert service["build"]["dockerfile"] == DOCKERFILE.relative_to(ROOT).as_posix()
        if name in IMAGES:
            assert service["build"]["target"] == name, f"{name}: builds target {service['build']['target']}"
        assert service["build"]["target"] in stages(), f"no stage {service['build']['target']} in {DOCKERFILE}"


def test_every_image_shares_the_base_stage_and_pyspark_is_built_once() -> None:
    assert pip_requirement_files(stages()["base"]) == ["docker/requirements-base.txt"]
    for image in IMAGES:
        assert chain(image)[0].name == "base", f"{image} does not start from the base stage"
    # The Spark runtime (pyspark is an sdist: minutes of building) is one stage under both Spark images.
    (spark,) = [s for s in stages().values() if "docker/requirements-processor.txt" in pip_requirement_files(s)]
    for image in ("processor", "jupyter"):
        assert spark.name in [s.name for s in chain(image)], f"{image} does not build on the {spark.name} stage"
    assert spark.name not in [s.name for s in chain("producer")]
    # requirements.txt itself (chDB, pyspark and all) goes into no image.
    for stage in stages().values():
        assert "requirements.txt" not in pip_requirement_files(stage), stage.name


def test_dockerfile_base_images_are_pinned() -> None:
    every = stages()
    for stage in every.values():
        if stage.parent not in every:
            image = stage.parent.split("@", 1)[0]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest" and re.search(r"\d", tag), f"FROM {stage.parent} is not pinned"


def _dockerignore_allows(relative: str) -> bool:
    # Docker's rule: the last pattern that matches a path (or one of its parents) decides.
    allowed = True
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/"))
               for prefix in prefixes):
            allowed = negate
    return allowed


def test_dockerfile_copies_exist_in_the_build_context() -> None:
    for kind, args in instructions():
        if kind != "COPY" or "--from=" in args:
            continue
        for source in [word for word in args.split() if not word.startswith("--")][:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert _dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    for stage in stages().values():
        for requirements in pip_requirement_files(stage):
            assert _dockerignore_allows(requirements), f"{requirements}: excluded by .dockerignore"


def test_env_file_never_enters_an_image() -> None:
    assert not _dockerignore_allows(".env")
    assert not _dockerignore_allows(".venv/bin/python")
    assert not _dockerignore_allows("notebooks/pulse.ipynb")


# --- what each image installs ----------------------------------------------------------------------

def pins(path: Path, *, includes: bool = False) -> dict[str, str]:
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r ") and includes:
            continue
        if line:
            assert not line.startswith("-"), f"{path.name}: {line!r}: role files list pins only"
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            found[_canonical(name)] = version.strip()
    return found


def role_files() -> list[Path]:
    # The producer's list lives in producer/, the folder users know it by; the others beside the Dockerfile.
    return sorted([*(ROOT / "docker").glob("requirements-*.txt"), ROOT / "producer" / "requirements.txt"])


def test_role_files_pin_exactly_what_requirements_txt_pins() -> None:
    full = pins(REQUIREMENTS)
    # JupyterLab and its kernel are notebook tooling, pinned for `make setup` in requirements-dev.txt.
    local = pins(ROOT / "requirements-dev.txt", includes=True) | full
    assert role_files(), "no docker/requirements-*.txt"
    assigned: set[str] = set()
    for path in role_files():
        for name, version in pins(path).items():
            assert local.get(name) == version, \
                f"{path.name}: {name}=={version}, requirements(-dev).txt has {local.get(name)}"
            assert name not in LOCAL_ONLY, f"{path.name}: {name} is for local use only ({LOCAL_ONLY[name]})"
            assigned.add(name)
    # A package added to requirements.txt must be given to the image(s) that use it, or declared local.
    unassigned = set(full) - assigned - set(LOCAL_ONLY)
    assert not unassigned, f"requirements.txt pins {sorted(unassigned)}, which no image installs and no note says why"
    # And each role file is installed by some stage, so none is dead.
    used = {f for stage in stages().values() for f in pip_requirement_files(stage)}
    assert {p.relative_to(ROOT).as_posix() for p in role_files()} == used


def image_pins(image: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for stage in chain(image):
        for relative in pip_requirement_files(stage):
            found |= pins(ROOT / relative)
    return found


def _marker_environment() -> dict[str, str]:
    env = {key: str(value) for key, value in default_environment().items()}
    env |= {"python_version": IMAGE_PYTHON, "python_full_version": f"{IMAGE_PYTHON}.11", "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}
    return env


@cache
def _requires(name: str) -> frozenset[str]:
    try:
        declared = metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return frozenset()  # not installed here: needed on another Python only (a marker said so)
    found = set()
    for line in declared:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(_marker_environment() | {"extra": ""}):
            found.add(_canonical(requirement.name))
    return frozenset(found)


def installed(image: str) -> set[str]:
    """Every distribution pip installs for the image: its pins and their dependencies."""
    seen: set[str] = set()
    todo = list(image_pins(image))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _requires(name)
    return seen


# --- what each image's command imports -------------------------------------------------------------

def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(nodes: Iterable[ast.AST], *, into_functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements at any depth (function bodies only if asked), except those only type
    checkers see (`if TYPE_CHECKING:`)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not into_functions:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _import_nodes(node.orelse, into_functions=into_functions)
            continue
        yield from _import_nodes(ast.iter_child_nodes(node), into_functions=into_functions)


def _names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    yield base
    # `from pulse.x import y` imports the module pulse.x.y when there is one.
    yield from (f"{base}.{alias.name}" for alias in node.names)


def _third_party(name: str) -> str | None:
    top = name.split(".", maxsplit=1)[0]
    if top in ("", "pulse", "__future__") or top in sys.stdlib_module_names:
        return None
    return top


@dataclass
class Reach:
    """What a command imports: `eager` when it starts (module-level imports of every module it
    loads), `lazy` only if it calls the function holding the import (or loads a module that way)."""

    eager: set[str] = field(default_factory=set)    # top-level names of third-party packages
    lazy: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)  # pulse modules loaded at start
    sources: list[str] = field(default_factory=list)


def _load(name: str, parsed: dict[str, tuple[ast.Module, str]]) -> list[tuple[str, ast.Module, str]]:
    """The pulse modules that importing `name` loads (its packages first), parsed once."""
    loaded = []
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        module = ".".join(parts[:depth])
        path = _module_file(module)
        if path is None:
            continue
        if module not in parsed:
            parsed[module] = (ast.parse(path.read_text()), "package" if path.name == "__init__.py" else "module")
        loaded.append((module, *parsed[module]))
    return loaded


def reach(eager_entry: Iterable[str]) -> Reach:
    found = Reach()
    parsed: dict[str, tuple[ast.Module, str]] = {}
    lazy_names: list[str] = []
    todo = list(eager_entry)
    while todo:
        name = todo.pop()
        if (top := _third_party(name)) is not None:
            found.eager.add(top)
            continue
        for module, tree, kind in _load(name, parsed):
            if module in found.modules:
                continue
            found.modules.add(module)
            found.sources.append(ast.unparse(tree))
            for node in _import_nodes(tree.body, into_functions=False):
                todo += _names(node, module, kind == "package")
            lazy_names += [n for node in _import_nodes(tree.body, into_functions=True)
                           for n in _names(node, module, kind == "package")]
    # Everything a function-level import can bring in, modules loaded only that way included.
    seen: set[str] = set(found.modules)
    while lazy_names:
        name = lazy_names.pop()
        if (top := _third_party(name)) is not None:
            found.lazy.add(top)
            continue
        for module, tree, kind in _load(name, parsed):
            if module not in seen:
                seen.add(module)
                lazy_names += [n for node in _import_nodes(tree.body, into_functions=True)
                               for n in _names(node, module, kind == "package")]
    found.lazy -= found.eager
    return found


def _cli_entry(subcommand: str) -> list[str]:
    """What `pulse <subcommand>` imports as it starts, from pulse/cli.py: the module's own imports,
    and those in the functions main and the subcommand's handler call (not other handlers)."""
    tree = ast.parse((ROOT / "pulse" / "cli.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    handlers: dict[str, str] = {}
    for node in ast.walk(functions["main"]):
        if isinstance(node, ast.Dict):
            handlers |= {k.value: v.id for k, v in zip(node.keys, node.values, strict=True)
                         if isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Name)}
    assert subcommand in handlers, f"pulse/cli.py: no handler for {subcommand!r} in main's dispatch table"
    others = set(handlers.values()) - {handlers[subcommand]}
    names = [n for node in _import_nodes(tree.body, into_functions=False) for n in _names(node, "pulse.cli", False)]
    todo, done = ["main", handlers[subcommand]], set()
    while todo:
        function = todo.pop()
        if function in done or function in others or function not in functions:
            continue
        done.add(function)
        names += [n for node in _import_nodes(functions[function].body, into_functions=True)
                  for n in _names(node, "pulse.cli", False)]
        todo += [node.id for node in ast.walk(functions[function]) if isinstance(node, ast.Name)]
    return names


def _notebook_entry() -> list[str]:
    names: list[str] = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                code = "".join(cell["source"])
                code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
                names += [n for node in _import_nodes(ast.parse(code).body, into_functions=True)
                          for n in _names(node, "__main__", False)]
    return names


def command_reach(image: str) -> Reach:
    cmd = command(image)
    if cmd[0] == "pulse":
        return reach(_cli_entry(cmd[1]))
    assert cmd[:2] == ["jupyter", "lab"], f"{image}: unexpected command {cmd}"
    return reach(_notebook_entry())


# Function-level imports an image's command never runs, so the image goes without the package. Each
# must stay function-level for that image (checked), or the command would fail at start.
NEVER_RUN = {
    "producer": {
        "pyspark": "Spark starts only for the job (`pulse process`, demo, notebook), never for `pulse produce`",
        "py4j": "pyspark's bridge to the JVM, reached only with Spark (the line above)",
        "clickhouse_connect": "the producer writes to Kafka only and never opens a ClickHouse store",
        "chdb": "the producer writes to Kafka only and never opens a ClickHouse store",
    },
    # Both open ClickHouse with PULSE_CLICKHOUSE__TRANSPORT=http (checked below), never chDB.
    "processor": {"chdb": "the ClickHouse server over HTTP"},
    "jupyter": {"chdb": "the ClickHouse server over HTTP"},
}


@cache
def _distributions_of() -> dict[str, list[str]]:
    return {top: [_canonical(d) for d in dists] for top, dists in metadata.packages_distributions().items()}


def _distribution(image: str, top: str) -> str:
    if top == "IPython":
        return "ipython"
    dists = _distributions_of().get(top)
    assert dists, f"{image}: imports {top}, which no distribution installed here provides"
    return dists[0]


def needed(image: str) -> dict[str, str]:
    """Distribution -> why the image needs it."""
    reached = command_reach(image)
    skipped = NEVER_RUN[image]
    for top in skipped:
        assert top not in reached.eager, f"{image}: {top} is imported as the command starts, not only lazily"
    why: dict[str, str] = {}
    if command(image)[0] == "jupyter":
        why |= {"jupyterlab": "the command", "ipykernel": "the notebooks' kernel"}
    why |= {_distribution(image, top): f"import {top}" for top in sorted(reached.eager)}
    why |= {_distribution(image, top): f"import {top} (in a function)" for top in sorted(reached.lazy - set(skipped))}
    if any(".to_pandas(" in source for source in reached.sources):
        why.setdefault("pandas", "pyarrow's to_pandas")
    for dist, implied in IMPLIED.items():
        if dist in why:
            why |= {extra: f"used by {dist}" for extra in implied if extra not in why}
    return why


@pytest.mark.parametrize("image", IMAGES)
def test_image_installs_what_its_command_imports(image: str) -> None:
    missing = {dist: reason for dist, reason in needed(image).items() if dist not in installed(image)}
    assert not missing, f"{image} lacks {missing}: add them to its docker/requirements-*.txt"


@pytest.mark.parametrize("image", IMAGES)
def test_image_installs_nothing_its_command_does_not_use(image: str) -> None:
    reasons = needed(image)
    # A pin pulled in anyway as another pin's dependency costs nothing extra.
    unused = {pin for pin in image_pins(image) if pin not in reasons
              and not any(pin in _requires(other) for other in image_pins(image) if other != pin)}
    assert not unused, f"{image} installs {sorted(unused)}, which its command never imports"


def test_what_the_images_leave_out() -> None:
    # The point of per-image lists, spelled out: chDB (about 530 MB) in no image; the producer
    # without Spark and the notebook stack; the processor without the notebook's.
    for image in IMAGES:
        assert not installed(image) & {"chdb", "chdb-core"}, image
    assert not installed("producer") & {"pyspark", "pandas", "matplotlib", "jupyterlab", "ipykernel"}
    assert not installed("processor") & {"pandas", "matplotlib", "jupyterlab", "ipykernel"}


def test_services_that_open_clickhouse_use_http_not_chdb() -> None:
    for image in ("processor", "jupyter"):
        assert services()[image]["environment"].get("PULSE_CLICKHOUSE__TRANSPORT") == "http", image
