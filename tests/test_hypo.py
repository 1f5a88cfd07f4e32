"""HyPO: the leave-one-out REINFORCE estimator of grad KL(pi_theta || pi_ref) against autograd of the exact KL
on an enumerable output space, and the HyPO trainer on the tiny world."""

import json
import math

import pytest
import torch
from conftest import tiny_policy
from transformers import LlamaConfig, LlamaForCausalLM

from simplemix import training
from simplemix.config import HypoConfig, TrainingConfig
from simplemix.miniature.world import build_world

EOS, PAD = 3, 0


def test_loo_surrogate_matches_a_hand_computation():
    logps = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -0.5, -1.0])
    surrogate, kl = training.loo_kl_surrogate(logps, ref, num_samples=2)
    # ratios r = (0.5, -1.0 | 0.0, -2.0); leave-one-out baselines b = (-1.0, 0.5 | -2.0, 0.0)
    advantages = [1.5, -1.5, 2.0, -2.0]
    assert kl.item() == pytest.approx((0.5 - 1.0 + 0.0 - 2.0) / 4)
    assert surrogate.item() == pytest.approx(sum(a * l for a, l in zip(advantages, [-1.0, -2.0, -0.5, -3.0])) / 4)
    surrogate.backward()
    assert logps.grad.tolist() == pytest.approx([a / 4 for a in advantages])
    with pytest.raises(ValueError, match="num_samples >= 2"):
        training.loo_kl_surrogate(logps, ref, num_samples=3)


def _tiny_llama(seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=16, initializer_range=0.5,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).float()


def _grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def test_kl_gradient_estimator_is_unbiased_against_autograd_of_the_exact_kl():
    # Vocabulary of 4 (token 3 is eos), 2 new tokens: 13 possible outputs per prompt, so the KL is a finite sum.
    policy, reference = _tiny_llama(0), _tiny_llama(1)
    prompts = [[1, 2], [2]]  # different lengths: left padding is part of what is checked
    prompt_ids = torch.tensor([[PAD] * (2 - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (2 - len(p)) + [1] * len(p) for p in prompts])
    outputs = [[EOS, PAD]] + [[a, b] for a in range(3) for b in range(4)]
    ids, mask, completion = training.with_samples(prompt_ids, prompt_mask, torch.tensor(outputs * 2), len(outputs), EOS)
    logps = training.sequence_logps(policy, ids, mask, completion).view(2, -1)
    with torch.no_grad():
        ref_logps = training.sequence_logps(reference, ids, mask, completion).view(2, -1)
    assert logps.exp().sum(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # the 13 outputs are all there is
    exact_kl = (logps.exp() * (logps - ref_logps)).sum(1).mean()
    policy.zero_grad()
    exact_kl.backward()
    exact = _grad(policy)

    def estimate(surrogate_of, repeats=60, copies=16, k=4):
        """Per-draw gradients of the surrogate on 2*copies prompts with k samples each, sampled by the trainer's own
        sampler; returns the normalised errors (mean - exact) / standard error per parameter."""
        generator, grads = torch.Generator().manual_seed(0), []
        batch_ids, batch_mask = prompt_ids.repeat(copies, 1), prompt_mask.repeat(copies, 1)
        for _ in range(repeats):
            with torch.no_grad():
                new = training.sample_policy(policy, batch_ids, batch_mask, num_samples=k, max_new_tokens=2,
                                             eos_token_id=EOS, pad_token_id=PAD, generator=generator)
            ids, mask, completion = training.with_samples(batch_ids, batch_mask, new, k, EOS)
            logps = training.sequence_logps(policy, ids, mask, completion)
            with torch.no_grad():
                ref_logps = training.sequence_logps(reference, ids, mask, completion)
            policy.zero_grad()
            surrogate_of(logps, ref_logps, k).backward()
            grads.append(_grad(policy))
        grads = torch.stack(grads)
        error, stderr = grads.mean(0) - exact, grads.std(0) / len(grads) ** 0.5
        # parameters no sample reaches (the eos embedding: eos is never an input) have no gradient either way
        assert error[stderr == 0].abs().max() < 1e-6
        return error[stderr > 0] / stderr[stderr > 0], grads.mean(0)

    z, mean = estimate(lambda lp, ref, k: training.loo_kl_surrogate(lp, ref, k)[0])
    # Unbiased: the squared normalised errors of the 720 reachable parameters average about 1 (measured 0.98,
    # max |z| 2.6, cosine 0.9994); the two wrong estimators below give 89 and 1133.
    assert (z ** 2).mean() < 1.5 and z.abs().max() < 5.0
    assert torch.cosine_similarity(mean, exact, 0) > 0.99
    no_stop_gradient, _ = estimate(lambda lp, ref, k: ((lp - ref) * lp).mean())
    pathwise, _ = estimate(lambda lp, ref, k: (lp - ref).mean())
    assert (no_stop_gradient ** 2).mean() > 20 and (pathwise ** 2).mean() > 20


# --------------------------------------------------------------------------------------------- HyPO trainer
def _cfg(kl_coef: float, **overrides) -> TrainingConfig:
    return TrainingConfig(learning_rate=5e-4, per_device_train_batch_size=4, max_length=192, logging_steps=1,
                          warmup_steps=0.0, hypo=HypoConfig(kl_coef=kl_coef, num_samples=2, max_new_tokens=12),
                          **overrides)


def _history(entry) -> list[dict]:
    return [row for row in json.loads((entry.path / "log_history.json").read_text()) if "loss" in row]


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_hypo_adds_the_kl_term_to_trls_dpo_loss(run_dir, finetuning):
    pairs = build_world(run_dir, progress=False).off_policy_pairs().select(range(12))
    policy = tiny_policy(run_dir)
    dpo = _history(training.train_dpo(pairs, _cfg(0.0, finetuning=finetuning), policy, run_dir, name="dpo",
                                      max_steps=3, progress=False))
    free = _history(training.train_hypo(pairs, _cfg(0.0, finetuning=finetuning), policy, run_dir, name="hypo0",
                                        max_steps=3, progress=False))
    tied = training.train_hypo(pairs, _cfg(1.0, finetuning=finetuning), policy, run_dir, name="hypo1", max_steps=3,
                               progress=False)
    # kl_coef 0: the samples are drawn and scored, but the loss and the updates are DPO's.
    assert [r["loss"] for r in free] == pytest.approx([r["loss"] for r in dpo], abs=1e-5)
    log = _history(tied)
    assert tied.manifest["info"]["method"] == "hypo"
    # Step 1: pi_theta is pi_ref (full: a second copy; LoRA: adapters disabled), so every log-ratio is 0.
    assert log[0]["hypo/kl"] == pytest.approx(0.0, abs=1e-5) and log[0]["loss"] == pytest.approx(math.log(2), 1e-4)
    assert all(0 < r["hypo/sample_length"] <= 12 for r in log)
    assert log[-1]["hypo/kl"] != 0.0 and log[-1]["loss"] != pytest.approx(dpo[-1]["loss"], abs=1e-4)
