"""DPO training through TRL on the tiny world: config mapping, LoRA/QLoRA, cached reference log-probs,
per-source metrics, store hits, resume after a kill, and a real learning check."""

import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from conftest import tiny_policy

from simplemix import onpolicy, training
from simplemix.config import ConfigError, TrainingConfig, load_profile
from simplemix.data import validate_rows
from simplemix.miniature import generators
from simplemix.miniature.oracle import judge
from simplemix.store import RunStore
from simplemix.miniature.policy import PolicyConfig
from simplemix.miniature.tasks import MAKERS
from simplemix.miniature.world import WorldConfig, build_world
from simplemix.sampling import Policy, generate, load_policy
from simplemix.world import resolve


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")


def small(**overrides) -> TrainingConfig:
    base = dict(learning_rate=5e-4, per_device_train_batch_size=4, max_length=192, logging_steps=1, warmup_steps=0.0)
    return TrainingConfig(**{**base, **overrides})


def pool(run_dir, n=None):
    ds = build_world(run_dir, progress=False).off_policy_pairs()
    return ds.select(range(n)) if n else ds


def history(entry) -> list[dict]:
    return json.loads((entry.path / "log_history.json").read_text())


def test_dpo_config_maps_fields_and_warns_about_nothing(tmp_path):
    from trl import DPOConfig  # imported first: importing TRL's stack may warn on its own

    cfg = TrainingConfig(beta=0.2, learning_rate=1e-5, num_train_epochs=2.0, per_device_train_batch_size=3,
                         gradient_accumulation_steps=2, lr_scheduler_type="cosine", warmup_steps=0.2, max_length=99,
                         loss_type=["sigmoid", "sft"], gradient_checkpointing=True, precompute_ref_log_probs=False,
                         logging_steps=7, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = training.dpo_config(cfg, tmp_path, save_steps=3)
    assert [str(w.message) for w in caught] == []
    assert isinstance(args, DPOConfig) and len(training.DPO_CONFIG_FIELDS) == 14
    for ours, name in training.DPO_CONFIG_FIELDS.items():
        if ours != "gradient_checkpointing":
            assert getattr(args, name) == getattr(cfg, ours), ours
    assert training.DPO_CONFIG_FIELDS["gradient_checkpointing"] == "activation_checkpointing"
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert args.bf16 is False and args.use_cpu is True and args.report_to == []
    assert args.save_steps == 3 and args.output_dir == str(tmp_path)


def test_trainer_classes_are_plain_module_attributes():
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    for name in ("SimpleMixDPOTrainer", "HyPOTrainer"):
        cls = vars(training)[name]  # defined in the module, not built on attribute access
        assert issubclass(cls, DPOTrainer) and cls.__module__ == "simplemix.training" and name in dir(training)
    assert issubclass(training.HyPOTrainer, training.SimpleMixDPOTrainer)
    assert issubclass(training.SourceCollator, DataCollatorForPreference) and "SourceCollator" in dir(training)
    assert not hasattr(training, "_classes") and "__getattr__" not in vars(training)


def test_every_training_field_is_mapped_to_dpo_config_or_declared_ours():
    import dataclasses

    from trl import DPOConfig

    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    ours = [f.name for f in dataclasses.fields(TrainingConfig)]
    assert not set(training.DPO_CONFIG_FIELDS.values()) - dpo_fields
    assert not set(training.NON_TRL_FIELDS) & set(training.DPO_CONFIG_FIELDS)
    # a new TrainingConfig field must be mapped or declared non-TRL (with what uses it), never silently dropped
    assert set(ours) == set(training.DPO_CONFIG_FIELDS) | set(training.NON_TRL_FIELDS)
    assert all(training.NON_TRL_FIELDS.values())
    assert set(training.REFERENCE_DPO_ARGS) <= dpo_fields and set(training.SET_BY_SIMPLEMIX) <= dpo_fields


def test_dpo_args_reach_dpo_config_and_unknown_or_colliding_keys_are_errors(tmp_path):
    args = training.dpo_config(TrainingConfig(dpo_args={"weight_decay": 0.1, "max_grad_norm": 0.5}), tmp_path)
    assert args.weight_decay == 0.1 and args.max_grad_norm == 0.5
    assert training.dpo_config(TrainingConfig(dpo_args={"weight_decay": 0.1}), tmp_path,
                               weight_decay=0.2).weight_decay == 0.2  # overrides come last
    with pytest.raises(ConfigError, match=r"training\.dpo_args\.weight_decy: not a trl\.DPOConfig field.*"
                                          r"did you mean 'weight_decay'"):
        training.dpo_config(TrainingConfig(dpo_args={"weight_decy": 0.1}), tmp_path)
    with pytest.raises(ConfigError, match=r"dpo_args\.beta: is set by the recipe key training\.beta"):
        training.check_dpo_args(TrainingConfig(dpo_args={"beta": 0.3}))
    with pytest.raises(ConfigError, match=r"dpo_args\.activation_checkpointing: .* training\.gradient_checkpointing"):
        training.check_dpo_args(TrainingConfig(dpo_args={"activation_checkpointing": True}))
    for key in ("output_dir", "use_cpu", "report_to", "save_strategy", "max_steps"):
        with pytest.raises(ConfigError, match=rf"dpo_args\.{key}: is set by simplemix"):
            training.check_dpo_args(TrainingConfig(dpo_args={key: None}))
    with pytest.raises(ConfigError, match=r"dpo_args\.finetuning: .* set training\.finetuning"):
        training.check_dpo_args(TrainingConfig(dpo_args={"finetuning": "lora"}))
    # a recipe: the override builds (dpo_args takes any key), and the check up front names the key
    prof = load_profile("smoke", ["training.dpo_args.weight_decy=0.1"])
    assert prof.training.dpo_args == {"weight_decy": 0.1}
    with pytest.raises(ConfigError, match=r"recipe: training\.dpo_args\.weight_decy: .*'weight_decay'"):
        training.check_dpo_args(prof.training, source="recipe: training.dpo_args")
    # dpo_args are part of the train key; only those that change the reference log-probs key the reference
    plain, decayed = TrainingConfig(), TrainingConfig(dpo_args={"weight_decay": 0.1})
    assert training._train_config(plain, "dpo", None) != training._train_config(decayed, "dpo", None)


@pytest.mark.parametrize("finetuning", ["lora", "qlora"])
def test_peft_two_steps_start_at_ln2(run_dir, finetuning):
    # Step-1 loss is ln 2 exactly when the reference is the base with adapters disabled (LoRA's B starts at 0).
    cfg = small(finetuning=finetuning)
    entry = training.train_dpo(pool(run_dir, 8), cfg, tiny_policy(run_dir), run_dir, name=finetuning, max_steps=2,
                               progress=False)
    log = history(entry)
    assert abs(log[0]["loss"] - math.log(2)) < 1e-4
    assert entry.manifest["info"]["global_step"] == 2 and log[1]["step"] == 2
    assert (entry.path / "adapter_config.json").exists() and (entry.path / "tokenizer.json").exists()


def _trl_own(run_dir, pairs, cfg, out, peft: bool):
    """TRL's plain DPOTrainer, computing the reference log-probs itself."""
    from trl import DPOTrainer

    model, tokenizer, peft_config = training.load_model(cfg, tiny_policy(run_dir))
    args = training.dpo_config(cfg, out, precompute_ref_log_probs=True, max_steps=2)
    return DPOTrainer(model, args=args, train_dataset=training.trl_pairs(pairs), processing_class=tokenizer,
                      peft_config=peft_config if peft else None)


def test_cached_ref_logps_equal_trls_own_and_train_identically(run_dir, tmp_path):
    pairs, cfg = pool(run_dir, 12), small()
    ref = training.reference_logps(pairs, cfg, tiny_policy(run_dir), run_dir, progress=False)
    cached = training.with_reference(training.trl_pairs(pairs), ref)
    for peft in (False, True):  # full fine-tuning and LoRA (adapters disabled) share one reference
        own = _trl_own(run_dir, pairs, small(finetuning="lora") if peft else cfg, tmp_path / f"own-{peft}", peft)
        assert own.train_dataset["pair_id"] == cached["pair_id"]
        for column in training.REF_COLUMNS:
            assert max(abs(a - b) for a, b in zip(own.train_dataset[column], cached[column])) < 1e-5
    # Two steps without warmup: step 2's loss depends on the reference values through the step-1 update.
    own = _trl_own(run_dir, pairs, cfg, tmp_path / "own", peft=False)
    model, tokenizer, _ = training.load_model(cfg, tiny_policy(run_dir))
    ours = training.make_trainer(model, tokenizer, training.dpo_config(cfg, tmp_path / "ours", max_steps=2), cached)
    own.train()
    ours.train()
    for a, b in zip(own.state.log_history[:2], ours.state.log_history[:2]):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["rewards/margins"] - b["rewards/margins"]) < 1e-5
    assert abs(ours.state.log_history[0]["loss"] - math.log(2)) < 1e-5


def test_training_without_stored_reference_stores_the_same_reference_and_trains_the_same(run_dir, tmp_path):
    """train() computes a missing reference in its own trainer and stores it as the ref-logps stage: same key and
    values as the standalone stage (TRL's own precompute), and the same training as a run that found it stored."""
    import shutil

    import pandas as pd

    pairs, cfg = pool(run_dir, 12), small()
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)  # the same world, nothing trained yet
    fused = training.train_dpo(pairs, cfg, tiny_policy(run_dir), run_dir, name="fused", max_steps=2, progress=False)
    refs = RunStore(run_dir).entries()
    (stored,) = [e for e in refs if e.stage == "ref-logps"]
    alone = training.reference_logps(pairs, cfg, tiny_policy(other), other, progress=False)
    assert alone.key == stored.key and fused.manifest["inputs"]["ref"] == stored.key
    a, b = (pd.read_parquet(e.path / "ref_logps.parquet").set_index("pair_id").sort_index() for e in (stored, alone))
    assert list(a.index) == list(b.index) and len(a) == len(set(pairs["pair_id"]))
    assert (a - b).abs().max().max() < 1e-6
    assert {k: v for k, v in stored.manifest["info"].items() if k != "computed_in"} == alone.manifest["info"]
    assert stored.manifest["info"]["computed_in"].startswith("train")
    split = training.train_dpo(pairs, cfg, tiny_policy(other), other, name="split", max_steps=2, progress=False)
    assert split.key == fused.key
    assert [r["loss"] for r in history(split) if "loss" in r] == pytest.approx(
        [r["loss"] for r in history(fused) if "loss" in r], abs=1e-6)


def _logp_by_hand(model, tokenizer, prompt, response) -> float:
    import torch

    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=True,
                                         return_dict=False)
    with torch.no_grad():
        logps = model(torch.tensor([full])).logits[0].log_softmax(-1)
    return sum(logps[t - 1, full[t]].item() for t in range(len(head), len(full)))


def test_per_source_margins_and_accuracies_match_a_hand_computation(run_dir, tmp_path):
    pairs = pool(run_dir, 2).map(lambda row, i: {"source": "on" if i == 0 else "off"}, with_indices=True)
    cfg = small(beta=0.1, per_device_train_batch_size=2)
    model, tokenizer, _ = training.load_model(cfg, tiny_policy(run_dir))
    data = training.trl_pairs(pairs)
    rows = [data[i] for i in range(2)]
    # Reference log-probs set so the on-policy pair's rewards are beta * (2, -1) and the off-policy's beta * (-1, 0.5).
    offsets = {1: (2.0, -1.0), 0: (-1.0, 0.5)}
    ref = {key: [] for key in training.REF_COLUMNS}
    for row in rows:
        for key, side, offset in zip(training.REF_COLUMNS, ("chosen", "rejected"), offsets[row["is_on_policy"]]):
            ref[key].append(_logp_by_hand(model, tokenizer, row["prompt"], row[side][0]["content"]) - offset)
    for key, values in ref.items():
        data = data.add_column(key, values)
    trainer = training.make_trainer(model, tokenizer, training.dpo_config(cfg, tmp_path, max_steps=1), data)
    trainer.train()
    step1 = trainer.state.log_history[0]
    assert step1["rewards/margins_on"] == pytest.approx(0.1 * (2.0 + 1.0), abs=1e-4)
    assert step1["rewards/accuracies_on"] == 1.0
    assert step1["rewards/margins_off"] == pytest.approx(0.1 * (-1.0 - 0.5), abs=1e-4)
    assert step1["rewards/accuracies_off"] == 0.0
    assert step1["rewards/margins"] == pytest.approx((0.3 - 0.15) / 2, abs=1e-4)


def test_mixture_training_logs_both_sources_and_is_a_store_hit_the_second_time(run_dir):
    from datasets import concatenate_datasets

    prof = load_profile("smoke", ["sampling.num_samples=2", "sampling.max_new_tokens=8", "sampling.temperature=1.0"])
    world = resolve(prof, run_dir)
    on = onpolicy.load_pairs(onpolicy.on_policy_pairs(world, world.cell(), progress=False)["pairs"])
    pairs = concatenate_datasets([on.select(range(min(6, len(on)))), pool(run_dir, 6)])
    cfg = small(per_device_train_batch_size=len(pairs))
    first = training.train_dpo(pairs, cfg, tiny_policy(run_dir), run_dir, name="mix", max_steps=2, progress=False)
    assert not first.hit and first.manifest["info"]["on_policy"] == len(pairs) - 6
    assert {"rewards/margins_on", "rewards/margins_off", "rewards/accuracies_on"} <= set(history(first)[0])
    assert not list(run_dir.glob("checkpoints/*")), "checkpoints outlived the completed stage"
    again = training.train_dpo(pairs.shuffle(seed=1), cfg, tiny_policy(run_dir), run_dir, name="mix", max_steps=2,
                               progress=False)
    assert again.hit and again.key == first.key and again.path == first.path


KILLED_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_policy
    from simplemix import training
    from simplemix.config import TrainingConfig
    from simplemix.miniature.world import build_world
    pairs = build_world(sys.argv[1], progress=False).off_policy_pairs()
    cfg = TrainingConfig(learning_rate=5e-4, per_device_train_batch_size=2, max_length=192, logging_steps=1,
                         checkpoint_min_interval_s=0)
    training.train_dpo(pairs, cfg, tiny_policy(sys.argv[1]), sys.argv[1], name="killed", max_steps=60,
                       progress=False)
""")


def test_killed_training_resumes_from_its_last_checkpoint(run_dir, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(run_dir), str(Path(__file__).parent)],
                            env=dict(os.environ))
    states = lambda: list(run_dir.glob("checkpoints/*/checkpoint-*/trainer_state.json"))  # noqa: E731
    deadline = time.time() + 300
    while not states() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert states(), "no checkpoint was written before the kill"
    assert not list(run_dir.glob("stages/train/*")), "a killed stage left an entry"

    steps = []
    trainer_class = training.SimpleMixDPOTrainer
    original = trainer_class.training_step
    monkeypatch.setattr(trainer_class, "training_step",
                        lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    pairs = build_world(run_dir, progress=False).off_policy_pairs()
    cfg = TrainingConfig(learning_rate=5e-4, per_device_train_batch_size=2, max_length=192, logging_steps=1,
                         checkpoint_min_interval_s=0)
    entry = training.train_dpo(pairs, cfg, tiny_policy(run_dir), run_dir, name="killed", max_steps=60, progress=False)
    info = entry.manifest["info"]
    resumed_at = int(info["resumed_from"].split("-")[1])
    assert 0 < resumed_at < 60 and info["global_step"] == 60
    assert len(steps) == 60 - resumed_at, "the rerun restarted instead of continuing"
    logged = [row["step"] for row in history(entry) if "loss" in row]
    assert logged == list(range(1, 61)), "the log history of the killed part was not carried over"
    assert not (run_dir / "checkpoints" / entry.key).exists()


def test_checkpoints_are_paced_by_their_least_interval(monkeypatch):
    from transformers import TrainerControl

    clock = [100.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    pacing = training.CheckpointPacing(30.0)
    saved = []
    for step in range(1, 21):
        clock[0] += 4.0  # a step every 4 s; the schedule asks for a checkpoint every 2 steps (8 s)
        control = TrainerControl(should_save=step % 2 == 0)
        saved.append(step) if pacing.on_step_end(None, None, control).should_save else None
    assert saved == [8, 16], "a checkpoint came sooner than 30 s after the last, or a due one was skipped"
    assert training.CheckpointPacing(0.0).on_step_end(None, None, TrainerControl(should_save=True)).should_save
    assert "checkpoint_min_interval_s" not in json.dumps(training._train_config(TrainingConfig(), "dpo", None))


# ----------------------------------------------------------------------------------------------- learning check
# TINY's policy (30 SFT steps) emits little but filler, so DPO has nothing to sharpen and collapses it: this
# check uses a world whose policy had 200 SFT steps on 40 prompts per category (about 12 s on 2 cores), the
# smallest we tried on which greedy outputs are answers that an oracle can score above zero.
LEARNING_WORLD = WorldConfig(sft_prompts=40, train_prompts=8, eval_prompts=3,
                             policy=PolicyConfig(sft_steps=200, batch_size=16))


def _math_pairs(run_dir, n_train=192, n_held=64):
    """Fresh math prompts (none from the SFT set), split by prompt: chosen = the correct formatted answer,
    rejected = the policy's own greedy answer when the oracle scores it lower (else a weak generator's)."""
    rng = random.Random(1234)
    seen = {t.prompt for t in build_world(run_dir, progress=False).tasks("sft")}
    tasks = []
    while len(tasks) < n_train + n_held:
        task = MAKERS["math"](rng)
        if task.prompt not in seen:
            seen.add(task.prompt)
            tasks.append(task)
    model, tokenizer = load_policy(tiny_policy(run_dir))
    greedy = [s[0].text for s in generate(model, tokenizer, [t.messages() for t in tasks], max_new_tokens=24)]
    rows = []
    for task, own in zip(tasks, greedy):
        chosen = f"The answer is {task.meta['answer']}."
        rejected = own
        while judge(task, rejected).reward > judge(task, chosen).reward - 0.2 or not rejected.strip():
            rejected = generators.respond(generators.STYLES["weak"], task, rng)
        rows.append({"prompt": task.messages(), "chosen": chosen, "rejected": rejected,
                     "score_chosen": judge(task, chosen).reward, "score_rejected": judge(task, rejected).reward})
    train, _ = validate_rows(rows[:n_train], origin="learning-check", source="off")
    held, _ = validate_rows(rows[n_train:], origin="learning-check-held", source="off")
    return train, held, tasks[n_train:]


def _held_out(policy, held, tasks, run_dir, cfg):
    """Mean chosen-minus-rejected log-prob on held-out pairs (TRL's numbers) and mean oracle reward of greedy
    answers to the held-out prompts."""
    import pandas as pd

    table = pd.read_parquet(training.reference_logps(held, cfg, policy, run_dir, progress=False).path
                            / "ref_logps.parquet")
    model, tokenizer = load_policy(policy)
    answers = generate(model, tokenizer, [t.messages() for t in tasks], max_new_tokens=24)
    reward = statistics.mean(judge(t, s[0].text).reward for t, s in zip(tasks, answers))
    return float((table.ref_chosen_logps - table.ref_rejected_logps).mean()), reward


def test_dpo_learns_to_prefer_correct_formatted_answers_on_held_out_prompts(tmp_path):
    run_dir = tmp_path / "learning"
    build_world(run_dir, LEARNING_WORLD, progress=False)
    train, held, held_tasks = _math_pairs(run_dir)
    cfg = TrainingConfig(beta=0.1, learning_rate=1e-4, per_device_train_batch_size=8, max_length=192,
                         logging_steps=4, seed=0)
    policy = tiny_policy(run_dir)
    margin_before, reward_before = _held_out(policy, held, held_tasks, run_dir, cfg)
    entry = training.train_dpo(train, cfg, policy, run_dir, name="learning-check", max_steps=24, progress=False)
    trained = Policy.trained(entry, policy)
    margin_after, reward_after = _held_out(trained, held, held_tasks, run_dir, cfg)
    # Measured once on the miniature world of issue 12 (0.5M-parameter policy) with seeds 0, 1, 2 (one epoch = 24
    # steps): the held-out margin rose by 2.61, 2.51, 2.59 nats and the greedy reward by 0.095, 0.111, 0.111 (from
    # 0.198); with chosen and rejected swapped (fresh pair ids), by -2.2 nats and -0.111. The thresholds sit at
    # about half the smallest rise, well above the seed-to-seed spread (0.1 nats, 0.016).
    assert margin_after - margin_before > 1.3, (margin_before, margin_after)
    assert reward_after - reward_before > 0.05, (reward_before, reward_after)
