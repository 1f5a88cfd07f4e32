"""The package installs and imports cleanly, and the pins in every install file agree."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def constraint_pins(name: str = "constraints.txt") -> dict[str, Version]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = Version(version)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_import_has_no_side_effects(tmp_path):
    """Importing every module leaves RNG state, warning filters, logging and the network alone."""
    probe = r"""
import logging, random, socket, sys, warnings
import numpy as np
def no_network(*a, **k): raise AssertionError("network access during import")
socket.socket.connect = no_network
socket.create_connection = no_network
py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
filters, handlers = list(warnings.filters), list(logging.getLogger().handlers)
levels = logging.getLogger().level
import importlib, pkgutil
import simplemix
modules = [m.name for m in pkgutil.walk_packages(simplemix.__path__, "simplemix.")]
assert {"simplemix.config", "simplemix.store", "simplemix.data", "simplemix.cli"} <= set(modules), modules
# simplemix.training subclasses TRL's trainers at module level, so importing it imports torch and trl; every
# other module must not, and none may touch RNG state, warning filters or logging
heavy = {"simplemix.training", "simplemix.launch"}
for name in modules:
    if name not in heavy:
        importlib.import_module(name)
assert "torch" not in sys.modules, "a simplemix module other than training pulled in torch"
assert warnings.filters == filters, "warning filters changed"
for name in sorted(heavy & set(modules)):  # torch, transformers and trl install warning filters of their own
    importlib.import_module(name)
assert random.getstate() == py_state, "python RNG touched"
assert (np.random.get_state()[1] == np_state).all(), "numpy RNG touched"
assert logging.getLogger().handlers == handlers and logging.getLogger().level == levels, "logging changed"
print("clean")
"""
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "clean"
    assert list(tmp_path.iterdir()) == [], "import wrote files into the working directory"


def test_constraints_satisfy_the_package_requirements():
    pins = constraint_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in reqs:
        assert canonical(req.name) in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[canonical(req.name)], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[canonical(req.name)]}, outside {req.specifier}")
    assert str(pins["torch"]) == "2.13.0", "torch must stay pinned to the local CPU wheel"


def test_gpu_constraints_satisfy_the_package_and_gpu_requirements():
    """constraints-gpu.txt is pip's resolution for vLLM; our ranges must admit it (vLLM pins transformers)."""
    pins = constraint_pins("constraints-gpu.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in map(Requirement, project["dependencies"] + project["optional-dependencies"]["gpu"]):
        assert req.specifier.contains(pins[canonical(req.name)], prereleases=True), (req, pins[canonical(req.name)])
    shared = {"trl", "peft", "accelerate", "datasets", "jupyter-book", "papermill"}
    cpu = constraint_pins()
    assert {n: pins[n] for n in shared} == {n: cpu[n] for n in shared}, "GPU and CPU environments drift apart"


def test_environment_yml_mirrors_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = constraint_pins()
    pinned = [d for d in pip_deps if "==" in d]
    assert len(pinned) >= 15
    for dep in pinned:
        name, version = dep.split("==")
        assert pins.get(canonical(name)) == Version(version), f"environment.yml {dep} != constraints.txt"
    assert "python=3.11" in env["dependencies"]


def test_readme_commands_are_makefile_targets():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    commands = re.findall(r"^make (\w+)", readme, flags=re.M)
    assert commands[:2] == ["book", "test"]
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile lacks target {target}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "simplemix.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "config" in r.stdout and "status" in r.stdout
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"simplemix": "simplemix.cli:main"}


def test_a_wheel_installed_elsewhere_finds_its_recipes_and_data(tmp_path):
    """A non-editable install (the wheel, not the checkout) runs `config show` and reads the leaderboard from another
    directory, and without its bundled files says in one line what it needs (exit 2), never `0 of 0 notebooks`."""
    import ast
    import os

    setup_tree = next(ast.literal_eval(n.value) for n in ast.parse((ROOT / "setup.py").read_text()).body
                      if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TREE")
    from simplemix import resources
    assert setup_tree == resources.TREE, "setup.py bundles other files than simplemix.resources looks for"

    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)], check=True,
                   cwd=tmp_path)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl"))],
                   check=True)
    probe = ("import sys, simplemix; from simplemix import evaluation; from simplemix.cli import main\n"
             f"assert simplemix.__file__.startswith({str(target)!r}), simplemix.__file__\n"
             "print(len(evaluation.leaderboard()))\n"
             "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("SIMPLEMIX_RECIPES", None)
    run = lambda *argv: subprocess.run([sys.executable, "-c", probe, *argv], cwd=elsewhere, env=env,
                                       capture_output=True, text=True)
    shown = run("config", "show", "--profile", "smoke")
    assert shown.returncode == 0, shown.stderr
    rows, _, rest = shown.stdout.partition("\n")
    assert int(rows) > 100 and "name: smoke" in rest
    assert list(elsewhere.iterdir()) == [], "config show wrote into the working directory"

    import shutil
    shutil.rmtree(target / "simplemix" / "_tree" / "notebooks")
    probe = probe.replace("print(len(evaluation.leaderboard()))\n", "")
    broken = run("run", "--profile", "smoke")
    assert broken.returncode == 2, (broken.returncode, broken.stdout, broken.stderr)
    assert broken.stderr.count("\n") == 1 and "needs its data, recipes and notebooks" in broken.stderr, broken.stderr
