"""Shared test fixtures: a tiny miniature world that builds in about a second."""

import pytest

from simplemix.miniature.policy import PolicyConfig
from simplemix.miniature.world import WorldConfig, build_world

# Enough prompts for every category and split, and a policy trained just enough to emit text.
TINY = WorldConfig(sft_prompts=12, train_prompts=8, dev_prompts=3, eval_prompts=3, train_hs2_prompts=6,
                   policy=PolicyConfig(sft_steps=30, weak_sft_steps=15, batch_size=8))


@pytest.fixture
def tiny_run(tmp_path):
    """A run directory whose miniature world is TINY (so ``miniature:*`` names resolve to it)."""
    build_world(tmp_path, TINY, progress=False)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_run_module(tmp_path_factory):
    """TINY built once for a whole test module."""
    path = tmp_path_factory.mktemp("tiny-world")
    build_world(path, TINY, progress=False)
    return path


@pytest.fixture
def run_dir(tiny_run_module, tmp_path, monkeypatch):
    """A private copy of the module's tiny world (each test starts with an empty training store), offline."""
    import shutil
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return Path(shutil.copytree(tiny_run_module, tmp_path / "run"))


def tiny_world(run_dir, overrides=None):
    """The smoke profile's world over ``run_dir`` (whose miniature world a fixture built), with overrides."""
    from simplemix.config import load_profile
    from simplemix.world import resolve

    return resolve(load_profile("smoke", overrides), run_dir)


def tiny_policy(run_dir, name: str = "miniature:sft-policy"):
    """A miniature SFT policy of the world in ``run_dir`` as a loadable, keyed ``Policy``."""
    from simplemix.config import ModelConfig

    return tiny_world(run_dir).policy(ModelConfig(name_or_path=name))
