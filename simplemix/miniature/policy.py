"""The miniature SFT policy: a locally trained tokenizer and a tiny Llama fine-tuned on demonstrations.

Both are saved with ``save_pretrained`` (chat template included) so that every later stage loads
them exactly as it would load a model from the hub.
Owns the tokenizer and SFT training; imports nothing else of simplemix.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Prefix-consistent, like the templates of real chat models: the prompt rendered with
# add_generation_prompt is a prefix of the prompt plus response, which TRL's DPO relies on.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class PolicyConfig:
    """Size and training budget of the SFT policy (0.49M parameters); the defaults build in about two minutes on
    one core."""

    vocab_size: int = 512
    hidden_size: int = 96
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512  # room for the multi-turn conversations of 'prompting' diversity
    sft_steps: int = 1200
    weak_sft_steps: int = 900  # the weaker SFT policy is the same run saved after this many steps
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0


def train_tokenizer(corpus: list[str], vocab_size: int, out_dir: Path):
    """A BPE tokenizer with single-digit tokens (so numbers stay learnable) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(),
    ])
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE, padding_side="left", model_max_length=512,
    )
    fast.save_pretrained(out_dir)
    return fast


@contextmanager
def deterministic(seed: int):
    """Seed everything and force deterministic kernels for the block, then restore the old setting."""
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@contextmanager
def single_threaded():
    """One intra-op thread for the block: a model this small runs fastest that way on a CPU, and a second CPU-bound
    job on the machine no longer slows it severalfold (torch's default spreads every op over all cores)."""
    import torch

    was = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def _encode(tokenizer, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                         tokenize=True, return_dict=False)
    assert full[: len(prompt)] == prompt, "chat template is not prefix-consistent"
    return full, [-100] * len(prompt) + full[len(prompt):]


def train_sft(tokenizer, demos: list[tuple[list[dict], str]], cfg: PolicyConfig, out_dir: Path,
              progress: bool = True, weak_dir: Path | None = None) -> dict:
    """Supervised fine-tuning of a fresh tiny Llama on (messages, response) pairs; loss on responses only.
    With ``weak_dir``, the model after ``cfg.weak_sft_steps`` steps is saved there too: a weaker SFT policy."""
    import torch
    from tqdm import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    with deterministic(cfg.seed):
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        encoded = [_encode(tokenizer, m, r) for m, r in demos]
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
        warmup = max(1, cfg.sft_steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, s / cfg.sft_steps))))
        order_rng = random.Random(cfg.seed)
        order: list[int] = []
        losses = []
        model.train()
        for step in tqdm(range(cfg.sft_steps), desc="SFT", disable=not progress, mininterval=2):
            if len(order) < cfg.batch_size:
                fresh = list(range(len(encoded)))
                order_rng.shuffle(fresh)
                order += fresh
            batch, order = [encoded[i] for i in order[: cfg.batch_size]], order[cfg.batch_size:]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in batch])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
            mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x, _ in batch])[:, None]).long()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if weak_dir is not None and step + 1 == min(cfg.weak_sft_steps, cfg.sft_steps):
                _save(model, tokenizer, weak_dir)
        model.eval()
    _save(model, tokenizer, out_dir)
    tail = losses[-50:]
    return {"parameters": sum(p.numel() for p in model.parameters()), "demonstrations": len(demos),
            "final_loss": round(sum(tail) / len(tail), 4), "first_loss": round(losses[0], 4)}


def sample(model_dir: Path, prompts: list[list[dict]], *, n: int, temperature: float, top_p: float,
           max_new_tokens: int, seed: int, batch_size: int = 128) -> list[list[str]]:
    """``n`` sampled responses per prompt from the saved policy (transformers' ``generate``), decoded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with deterministic(seed), torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            batch = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            ids = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [texts[j * n:(j + 1) * n] for j in range(len(batch))]
    return out


def _save(model, tokenizer, out_dir: Path) -> None:
    """``save_pretrained`` of the model (greedy generation config, eval mode) and its tokenizer."""
    from transformers import GenerationConfig

    training = model.training
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=64)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.train(training)
