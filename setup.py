"""The wheel carries the project's data, recipes, notebooks and book sources as package data (simplemix/_tree), so a
non-editable install finds them through importlib.resources; an editable install reads them from the checkout."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
TREE = ("data", "recipes", "notebooks", "book", "_config.yml", "_toc.yml")  # = simplemix.resources.TREE
SKIP = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc")


class BuildWithTree(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        target = Path(self.build_lib) / "simplemix" / "_tree"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in TREE:
            src = HERE / name
            if src.is_dir():
                shutil.copytree(src, target / name, ignore=SKIP)
            elif src.is_file():
                shutil.copy2(src, target / name)


setup(cmdclass={"build_py": BuildWithTree})
