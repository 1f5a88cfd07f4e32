"""A tiny local stand-in for the hub, built deterministically: the ``tiny-hub`` profile's models and data.

The real-model path (``single-gpu``, ``paper``) reads hub-format artifacts: a causal-LM policy and a
sequence-classification reward model, each with its own tokenizer and chat template, and preference files in
UltraFeedback's and HelpSteer2's layouts. This module writes small ones of each to a folder, from a seed and the
bundled UltraFeedback slice, with the defects real data has, so the whole non-miniature path runs on a CPU in
minutes (``make test`` does). Models this small teach nothing: numbers from this profile test the code, never the
paper.

    python -m simplemix.tinyhub [OUT]      # default: the folder recipes/tiny-hub.yaml points at

Owns only the builder; imports resources.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from simplemix import resources

# Llama-3's chat layout for the policy, Gemma's for the reward model: the RM must re-render every conversation
# with its own template and tokenizer, as Skywork-Reward-Gemma does for a Llama policy in the paper.
POLICY_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
REWARD_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
POLICY_SPECIAL = {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": "<|finetune_right_pad_id|>",
                  "other": ["<|start_header_id|>", "<|end_header_id|>"]}
REWARD_SPECIAL = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "other": ["<start_of_turn>", "<end_of_turn>"]}

SFT_STEPS = 150
UF_PROMPTS = 40  # real UltraFeedback pairs taken from the bundled slice (before the added defects)
HS2_PROMPTS = 32
LONG_PROMPT_CHARS = 2000  # past the profile's training.max_length in tokens, within its reward.max_length
HS2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def default_out() -> Path:
    """The folder ``recipes/tiny-hub.yaml`` points at (``runs/tiny-hub/hub`` in a checkout)."""
    return resources.root() / "runs" / "tiny-hub" / "hub"


def _slice() -> list[dict]:
    from simplemix.data import read_jsonl

    return read_jsonl(resources.path("data") / "ultrafeedback_slice" / "train_clean_1000.jsonl")


def _tokenizer(corpus: list[str], special: dict, template: str, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``corpus`` (any Unicode string encodes), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = [special["bos"], special["eos"], special["pad"], *special["other"]]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=names, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special["bos"], eos_token=special["eos"],
                                   pad_token=special["pad"], additional_special_tokens=special["other"])
    fast.chat_template = template
    return fast


def _policy(out: Path, corpus: list[str], sft_pairs: list[tuple[str, str]], seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = _tokenizer(corpus, POLICY_SPECIAL, POLICY_TEMPLATE, 1024)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _sft(model, tok, sft_pairs)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=True, temperature=0.7,
                                               top_p=0.9)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _sft(model, tok, pairs: list[tuple[str, str]], steps: int = SFT_STEPS, batch: int = 8, max_len: int = 160) -> None:
    """A few steps of next-token training on (prompt, answer) conversations, loss on the answer and its end-of-turn
    token: a random-weight model's greedy output is one repeated token (often a special one, so an empty text);
    this makes it an imperfect policy that writes words and sometimes stops, as an SFT model does."""
    import torch

    rows = []
    for prompt, answer in pairs:
        head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        ids_head = tok(head, add_special_tokens=False)["input_ids"][-max_len // 2:]
        ids_answer = tok(answer, add_special_tokens=False)["input_ids"][:max_len - len(ids_head) - 1]
        rows.append((ids_head + ids_answer + [tok.eos_token_id], len(ids_head)))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        picked = [rows[i] for i in torch.randint(len(rows), (batch,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in picked)
        input_ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for j, (ids, start) in enumerate(picked):
            input_ids[j, :len(ids)] = torch.tensor(ids)
            labels[j, start:len(ids)] = torch.tensor(ids[start:])
            mask[j, :len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _reward(out: Path, corpus: list[str], seed: int) -> None:
    import torch
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    tok = _tokenizer(corpus, REWARD_SPECIAL, REWARD_TEMPLATE, 768)
    config = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                          sliding_window=256, num_labels=1, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed + 1)
    model = Gemma2ForSequenceClassification(config)
    with torch.no_grad():  # a spread of scores, so that best and worst of N differ at float32
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def ultrafeedback_rows(rows: list[dict]) -> list[dict]:
    """UltraFeedback-binarized rows (prompt, chosen, rejected, score_chosen, score_rejected) with real data's
    defects: a repeated prompt, an identical pair, an empty response, a prompt longer than any max_length and
    Unicode line and paragraph separators inside texts."""
    out = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
            "score_chosen": r["metadata"]["score_chosen"], "score_rejected": r["metadata"]["score_rejected"]}
           for r in rows[:UF_PROMPTS]]
    first = out[0]
    out += [
        # the same prompt again with other responses (UltraFeedback has prompts that appear more than once)
        {**first, "chosen": rows[UF_PROMPTS]["chosen"], "rejected": rows[UF_PROMPTS + 1]["rejected"]},
        {**out[1], "rejected": out[1]["chosen"]},  # an identical pair: no DPO signal
        {**out[2], "prompt": out[2]["prompt"] + " (briefly)", "rejected": ""},  # an empty response
        {**out[3], "prompt": "Summarise this text:\n" + (out[3]["chosen"] + "\n") * (LONG_PROMPT_CHARS // max(1, len(out[3]["chosen"])) + 1)},
        {**out[4], "prompt": "First line\u2028second line\u2029and a paragraph: " + out[4]["prompt"],
         "chosen": out[4]["chosen"] + "\u2028\u0085(end)"},
    ]
    return out


def helpsteer2_rows(rows: list[dict]) -> list[dict]:
    """nvidia/HelpSteer2 rows (two consecutive rows a prompt, five 0-4 attribute ratings each), from UltraFeedback
    pairs, with a multi-turn prompt, a tie, a U+2028 and an empty response."""
    out = []
    for k, r in enumerate(rows[:HS2_PROMPTS]):
        prompt = r["prompt"]
        if k == 0:
            prompt = "Hello.\n<extra_id_1>Assistant\nHello! How can I help?\n<extra_id_1>User\n" + prompt
        if k == 1:
            prompt = prompt + "\u2028Answer in one line."
        good = {a: 2 + (k + i) % 3 for i, a in enumerate(HS2_ATTRIBUTES)}
        bad = {a: max(0, v - 1 - (k + i) % 2) for i, (a, v) in enumerate(good.items())}
        if k == 2:
            bad = dict(good)  # a tie: no preference to learn
        out.append({"prompt": prompt, "response": r["chosen"], **good})
        out.append({"prompt": prompt, "response": "" if k == 3 else r["rejected"], **bad})
    return out


def build(out: str | Path | None = None, seed: int = 0, force: bool = False) -> Path:
    """Write the policy, the reward model and the two preference files to ``out``; a complete folder built by the
    same code is kept (``force`` rebuilds). Returns the folder."""
    import torch

    import fcntl

    out = Path(out or default_out())
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"seed": seed, "builder": _code_hash()}
    with open(out.with_name(out.name + ".lock"), "a") as lock:  # two processes asking at once build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = out / "BUILT.json"
        if done.exists() and not force and json.loads(done.read_text()) == stamp:
            return out
        if out.exists():
            shutil.rmtree(out)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread: the same float sums, so the same bytes, on every machine of a kind
        try:
            _write(tmp, seed)
        finally:
            torch.set_num_threads(threads)
        (tmp / "BUILT.json").write_text(json.dumps(stamp))
        tmp.rename(out)
    return out


def _write(tmp: Path, seed: int) -> None:
    from simplemix.data import write_jsonl

    rows = _slice()
    corpus = [t for r in rows[:400] for t in (r["prompt"], r["chosen"], r["rejected"])]
    # the policy's SFT data: short answers (as the profile's max_new_tokens), prompts not in its training sets
    sft = [(r["prompt"], r["chosen"].split("\n")[0][:300]) for r in rows[200:600]]
    _policy(tmp / "policy", corpus, sft, seed)
    _reward(tmp / "reward", corpus[::-1], seed)
    write_jsonl(tmp / "ultrafeedback.jsonl", ultrafeedback_rows(rows))
    write_jsonl(tmp / "helpsteer2.jsonl", helpsteer2_rows(rows[UF_PROMPTS + 2:]))
    (tmp / "README.md").write_text(
        "Built by `python -m simplemix.tinyhub`: random-weight models (the policy given a few SFT steps) for testing\nthe real-model path; nothing measured with them is a result.\n"
        "UltraFeedback texts: the project's bundled slice (data/ultrafeedback_slice, MIT).\n")


def _code_hash() -> str:
    """What the artifacts' bytes depend on: this builder, the JSONL writer, the bundled slice and the libraries."""
    import hashlib
    from importlib import metadata

    from simplemix import data

    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(data.__file__).read_bytes())
    digest.update((resources.path("data") / "ultrafeedback_slice" / "train_clean_1000.jsonl").read_bytes())
    digest.update(" ".join(metadata.version(p) for p in ("torch", "transformers", "tokenizers")).encode())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simplemix.tinyhub", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help=f"output folder (default: {default_out()})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    args = parser.parse_args(argv)
    print(build(args.out, args.seed, args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
