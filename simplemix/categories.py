"""Prompt categories of AlpacaEval 2.0 (paper, Appendix B and Figure 7): the 16 WildChat categories, the read labels
and three classifiers, all with one interface, ``classify(instructions) -> list[str]`` plus a ``name``.

- :class:`ApiClassifier`: an OpenAI-compatible chat-completions endpoint (the paper used gpt-4o-mini).
- :class:`LocalModelClassifier`: the same prompt through a :mod:`simplemix.sampling` backend, greedy.
- :class:`KeywordClassifier`: runs offline on a CPU with nothing downloaded.
- :class:`ReadLabels` (``read-v1``): the labels a reader gave each of the 805 AlpacaEval prompts under written
  conventions (``data/categories/labelling_conventions.md``), looked up by the prompt's hash; the keyword rules
  label any other prompt. It made the shipped labels.

Why keywords for the offline fallback: every pretrained alternative (sentence embeddings with nearest neighbours, an
NLI zero-shot model, a small instruct LM) needs weights fetched from the hub, and a supervised model would need
training labels beyond our 120-prompt check set. A few hundred weighted patterns with a fixed tie-break order are
deterministic, label all 805 prompts in a fraction of a second, and every label can be explained
(``KeywordClassifier().scores(text)``). The rules were tuned only on prompts outside the hand-labelled check set. How far the
read labels and the keyword rules agree with that check set is asserted in ``tests/test_categories.py`` and
reported by category in ``data/categories/README.md`` and chapter 01.

The paper does not publish its classification prompt; :data:`CLASSIFICATION_PROMPT` is our own wording around the
authors' category list and catch-all string.
Owns the category labels and classifiers; imports config, sampling and evaluation, lazily.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from simplemix import resources

CATEGORY_DIR = resources.path("data", "categories")
CATEGORIES_JSON = CATEGORY_DIR / "wildchat_16_categories.json"
LABELS_CSV = CATEGORY_DIR / "alpaca_eval_categories.csv"
HAND_LABELS = CATEGORY_DIR / "hand_labels.jsonl"
READ_LABELS = CATEGORY_DIR / "read_labels.jsonl"

_BUNDLED = json.loads(CATEGORIES_JSON.read_text())
CATEGORIES: list[str] = list(_BUNDLED["categories"])
CATCH_ALL: str = _BUNDLED["catch_all"]
OTHER = "other"
# paper short name -> category; the bundled file marks two mappings "(inferred)" (the paper names them loosely)
PAPER_CATEGORIES: dict[str, str] = {short: re.sub(r"\s*\(inferred\)$", "", cat)
                                    for short, cat in _BUNDLED["paper_short_names"].items()}

#: The user message that asks a chat model for one category: our wording (the paper does not publish its own)
#: around the 16 category names and the authors' catch-all.
CLASSIFICATION_PROMPT = """\
Classify the user prompt below into exactly one of these categories:

{numbered}

Answer with the category name only, exactly as written above. If none fits, answer "other: <category name>".

User prompt:
<<<
{instruction}
>>>"""

SHIPPED_DATE = "2026-12-04"


def classification_prompt(instruction: str) -> str:
    """The user message that asks a chat model for one category (API and local classifiers alike)."""
    numbered = "\n".join(f"{i}. {c}" for i, c in enumerate([*CATEGORIES, CATCH_ALL], start=1))
    return CLASSIFICATION_PROMPT.format(numbered=numbered, instruction=instruction)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


_NORMED = {_norm(c): c for c in CATEGORIES}
# names a model may use instead of the full category, tried only when no full name appears
_ALIASES = {
    "math": "mathematical reasoning or calculation", "mathematics": "mathematical reasoning or calculation",
    "calculation": "mathematical reasoning or calculation", "creative writing": "assisting or creative writing",
    "translation": "multilinguality or translation", "multilinguality": "multilinguality or translation",
    "summarization": "information extraction or summarization",
    "information extraction": "information extraction or summarization",
    "ethics": "awareness of ethics and other risks",
    "factual information": "factual information (general or professional)",
    "editing": "editing or rewriting", "rewriting": "editing or rewriting", "role play": "roleplay",
    "tips": "tips, opinions or advice", "advice": "tips, opinions or advice",
    "analysis": "analysis or decision explanation",
}


def parse_category(text: str) -> str:
    """One of :data:`CATEGORIES`, or ``"other"``, from a model's free-text answer.

    Tolerates case, punctuation, numbering ("9. coding"), a bare number, quotes and markdown. When several names
    appear, the earliest in the answer wins (the authors' script took the first in list order instead).
    """
    norm = _norm(text or "")
    if not norm:
        return OTHER
    if re.match(r"(?:category )?other(?: |$)", norm):
        return OTHER
    if norm.isdigit():
        k = int(norm)
        return CATEGORIES[k - 1] if 1 <= k <= len(CATEGORIES) else OTHER
    padded = f" {norm} "
    found = [(padded.find(f" {n} "), c) for n, c in _NORMED.items() if f" {n} " in padded]
    if not found:
        found = [(padded.find(f" {a} "), c) for a, c in _ALIASES.items() if f" {a} " in padded]
    if found:
        return min(found)[1]
    return OTHER


# ---------------------------------------------------------------------------------------------------------------
# offline classifier


def _any(*alternatives: str) -> str:
    """A pattern matching any alternative as whole words."""
    return r"(?<![\w])(?:" + "|".join(alternatives) + r")(?![\w])"


_LANGS = ("english|old english|french|german|spanish|italian|portuguese|japanese|chinese|mandarin|cantonese|korean|"
          "russian|arabic|hindi|dutch|swedish|greek|latin|hebrew|quenya")
_WRITING = ("story|stories|short stories|poem|poems|poetry|haiku|haikus|song|lyrics|rap|verses?|essay|article|blog|"
            "blog post|post|tweet|caption|captions|bio|email|e-mail|letter|speech|monologue|script|screenplay|play|"
            "scene|dialogue|interview|pitch|proposal|business plan|lesson plan|syllabus|outline|template|description|"
            "review|slogan|motto|tagline|titles?|headline|hook|names?|jokes?|limerick|eulogy|whitepaper|resume|idea|"
            "cover letter|introduction|announcement|ad|advertisement|punch lines|questionnaire|quiz|job description|"
            "agenda|to-do list|checklist|ticket|user story|acceptance criteria|backstory|plot|ascii art|recipe|"
            "message|reply|response|product description|property listing|signature|memoir|chronology|first act|"
            "graphic novel|novel|fan fiction|paragraph|study notes|scenario|bibliography|video|quote|compliment|"
            "slides?|presentation|pok[eé]mon")
_WRITE_VERBS = ("write|compose|draft|create|craft|come up with|generate|design|make|prepare|tell|give|suggest|"
                "provide|invent|structure|phrase|develop|think of|wrote|choose|complete|plan")

# category -> [(weight, pattern)], matched on the instruction's head (see _head); a pattern counts once
RULES: dict[str, list[tuple[float, str]]] = {
    "coding": [
        (4, _any(r"python", r"javascript", r"typescript", r"java", r"c\+\+", r"c#", r"golang", r"ruby", r"rust",
                 r"php", r"kotlin", r"luau?", r"gdscript", r"bash", r"powershell", r"sql", r"html", r"css", r"regex",
                 r"regular expression", r"latex", r"markdown", r"json", r"yaml", r"lean 4", r"spl", r"malbolge",
                 r"discord\.js", r"pygame", r"godot", r"cypress", r"docker", r"npm", r"git", r"github", r"api",
                 r"r \(programming language\)")),
        (2, _any(r"code")),  # weaker: "the Enigma code"
        (3, _any(r"coding", r"programming", r"programmer", r"source code", r"debug\w*", r"bugs?",
                 r"data structures?", r"data model", r"developer tools", r"stack ?overflow", r"command line",
                 r"bash command", r"excel function", r"google sheets formula", r"(?:spreadsheet|excel) formula",
                 r"css code", r"front ?end", r"back ?end")),
        (3, _any(rf"(?:{_WRITE_VERBS}|implement|build)(?: me)? (?:a |an |the )?(?:\w+ ){{0,3}}"
                 r"(?:function|program|class|query|command|bot)")),
        (3, _any(r"implement (?:a|an|the)", r"program (?:that|to)")),
        (2, _any(r"algorithms?", r"dynamic programming")),
    ],
    "mathematical reasoning or calculation": [
        (3, _any(r"solve (?:this|the|for) (?:equation|x|for)", r"solve for", r"equations?", r"calculate", r"compute",
                 r"derivative", r"integral", r"prove (?:the (?:given|following)|that)", r"proof", r"theorem",
                 r"matri(?:x|ces)", r"variance", r"probability", r"math", r"mathematical", r"mathematics", r"algebra",
                 r"geometry", r"arithmetic", r"formula", r"integers?", r"prime numbers?", r"normalize a vector",
                 r"area (?:of|and perimeter)", r"perimeter", r"percentage", r"(?:given|this|number) sequence",
                 r"f\(x\)", r"line segment", r"how much (?:did|does|do|will|has|is|money)")),
        (3, r"how many .*(?:step-by-step|left|in total|total)"),
        (3, r"(?:verify|prove) (?:the )?(?:correctness of )?(?:the )?(?:given |following )?statement"),
        (3, r"l.h[oô]pital"),
        (1, r"\$\s?\d"),
        (1, r"\$\s?\d.*\$\s?\d"),
        (2, r"\d\s*[+*/^×=]\s*\(?-?\d|\d\s+-\s+\(?\d"),  # "5.9-6.5" is a range, "x - 2" arithmetic
        (2, r"\d\s*%\s*(?:of|tip|on|off)"),
        (1, _any(r"cost of", r"estimate")),
    ],
    "logical reasoning": [
        (4, _any(r"first-order logic")),
        (3, _any(r"riddle", r"puzzle", r"logic(?:al)? (?:puzzle|problem|question|reasoning)", r"trick question",
                 r"sudoku", r"brain ?teaser", r"where is the \w+ now", r"in this story")),
        (3, r"(?<![\w])(?:sons?|daughters?|brothers?|sisters?|kids|children)(?![\w]).{0,200}"
            r"(?:who is|what is the name|how many)"),
        (2, r"^if .{5,200}(?<![\w])then(?![\w])"),
    ],
    "multilinguality or translation": [
        (3, _any(r"translat\w+", r"how do you say",
                 rf"(?:say|write|written|speak|it|this|that|sentence|text|words?) (?:in|into) (?:{_LANGS})",
                 rf"(?:learn|learning|speak|study|studying) (?:{_LANGS})", r"kanji", r"foreign language", r"quenya",
                 r"elvish")),
        (2, r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]"),  # kana, CJK ideographs, hangul
    ],
    "classification": [
        (3, _any(r"classify", r"classified", r"categori[sz]e", r"which category", r"into one of", r"sentiment",
                 r"offensive or not", r"spam", r"duplicates?", r"esrb rating", r"predict how many stars",
                 r"identify the programming language", r"in what genres?", r"genre of the book",
                 r"answer yes or no", r"relevant or not")),
        (2, _any(r"decide (?:whether|if)", r"determine (?:whether|if) (?:the given|the|it|this)", r"belongs? to",
                 r"indicate the genre")),
    ],
    "information extraction or summarization": [
        (3, _any(r"summar(?:y|ies|ise|ize|ized|izing|ising)", r"extract", r"retrieve", r"tl;?dr", r"key points",
                 r"key takeaways", r"content of the article", r"answer the question about the paper",
                 r"explanation of the requested part")),
        (2, _any(r"(?:based on|from) the (?:article|text|abstract|passage|paper|dialogue|conversation|contract|"
                 r"email|information provided in the article)", r"read (?:the given|it) carefully")),
    ],
    "editing or rewriting": [
        (3, _any(r"rewrite", r"re-write", r"rephrase", r"paraphrase", r"proofread", r"simplify",
                 r"correct (?:the )?(?:grammar|spelling|transcription|errors)", r"spelling errors",
                 r"grammatically correct", r"change the (?:tone|first person|response)", r"rewritten",
                 r"more empathic", r"improve the (?:article|text|writing|essay|paragraph)", r"expand the given",
                 r"checked for any \w+ errors", r"convert .{0,40}citation style",
                 r"make (?:it|this|the \w+) (?:more|less) \w+")),
        (1, _any(r"edit", r"convert")),
    ],
    "linguistics": [
        (4, _any(r"origins? (?:and history )?of the word", r"part of speech")),
        (3, _any(r"synonyms?", r"antonyms?", r"rhym\w*", r"etymology", r"pronunciation", r"pronounce", r"grammar",
                 r"alliterations?", r"adjectives", r"underlined word", r"sat word", r"acronym", r"new word",
                 r"a word that", r"words (?:that|which|where)", r"meaning of the (?:given )?(?:phrase|word)",
                 r"define what the", r"idioms?", r"crossword", r"names? .{0,40}that mean")),
        (1, _any(r"words?", r"phrases?", r"letters")),
    ],
    "roleplay": [
        (3, _any(r"act (?:as|like)", r"acting as", r"pretend(?:ing)? (?:to be|you are|you're|for)",
                 r"play (?:the|a) (?:role|part)", r"role-?play", r"assume (?:the|a) (?:role|persona)", r"persona of",
                 r"imagine you are", r"if you were", r"you will simulate", r"simulate an?", r"i want you to act",
                 r"how would you \w+ yourself", r"as an? [\w ]{2,30}, (?:how|what) would you",
                 r"as an? [\w ]{2,30}, describe", r"describe your (?:daily life|emotions)")),
        (2, r"^(?:you are|you're) (?:an? |the )(?!given)"),
    ],
    "assisting or creative writing": [
        (3, _any(rf"(?:{_WRITE_VERBS})(?: me| us)?(?:\s+\S+){{0,5}}\s+(?:{_WRITING})", r"help me write",
                 r"help me (?:with )?my (?:essay|memoir|speech|letter)", r"brainstorm",
                 r"(?:write|compose|draft|prepare|generate)(?:\s+\S+){0,4}\s+questions")),
        (3, r"^(?:message|email|letter|note) to"),
        (3, _any(r"turn (?:it|this|them) into an?")),
        (3, rf"(?:{_WRITING}) (?:should|must|needs to) be written"),
        (2, r"^(?:please )?(?:write|compose|draft)(?![\w])"),
        (1, _any(r"ideas? for (?:a |an |the )?(?:new )?(?:movie|video|videos|story|plot|content|post|quiz)")),
    ],
    "recommendation": [
        (3, _any(r"(?<!letter of )recommend\w*", r"places to (?:visit|go|see)", r"things to do",
                 r"worth (?:visiting|a visit)", r"to visit", r"where can i (?:buy|find|get)", r"gifts?", r"playlists?",
                 r"alternatives? to", r"might (?:like|enjoy|interest)", r"also like", r"similar to", r"good rated",
                 r"suggesting", r"best (?:books|movies|films|shows|songs|places|universit\w+|libraries|tools|apps|"
                 r"restaurants|games|podcasts)", r"(?:some|any) (?:good|great|cool|fun) (?!ways)\w+",
                 r"what should i (?:buy|get|build|watch|read|listen)", r"itinerary", r"road trip",
                 r"product bundles", r"audiobooks", r"podcasts", r"hiking trails", r"walking tour",
                 r"(?:any|free) \w+ tools", r"top (?:\d+ )?(?:places|cities|destinations)")),
        (2, _any(r"suggest (?:some|a few|a|an|me|other|any)", r"(?:some|few|any|the) options",
                 r"options (?:for|of|that)", r"some (?:of the )?(?:famous|popular|well known|well-known) \w+",
                 r"(?:examples of|list of|a few) (?:popular|famous|well known|well-known) \w+",
                 r"conversation starters?",
                 r"(?:books|movies|series|shows|songs|music|courses|papers|activities|snacks|toys|brands) "
                 r"(?:to|for|that|i)", r"ideas (?:for|to|on|about)", r"the best \w+ for",
                 r"some \w+ (?:i|we) (?:can|could|should)", r"give me (?:some )?ideas", r"search queries")),
    ],
    "awareness of ethics and other risks": [
        (3, _any(r"ethic(?:s|al|ally)", r"moral(?:ly|ity)?", r"is it (?:wrong|right|ethical|okay|ok)",
                 r"is it morally wrong", r"is \w+ing [\w ]{0,30}wrong", r"unethical", r"trolley problem",
                 r"decline inappropriate", r"war ?crimes?", r"pirat(?:ing|ed)", r"piracy")),
        (1, _any(r"illegal", r"legal", r"laws?", r"crimes?", r"commit", r"suicid\w*", r"weapons?", r"violen\w+",
                 r"harm\w*", r"discriminat\w+", r"racis\w+")),
    ],
    "history or common practices": [
        (3, _any(r"history", r"historical", r"when (?:was|were|did)", r"invented", r"first (?:made|created|built)",
                 r"originated", r"origins?", r"colonized", r"traditions?", r"^who (?:created|invented|made|founded)",
                 r"who (?:created|invented|founded)", r"hoax", r"how did .{0,40}(?:get|discover|become)",
                 r"became the")),
        (1, _any(r"ancient", r"medieval", r"century", r"centuries", r"empire", r"war", r"1[5-9]\d\ds?")),
    ],
    "analysis or decision explanation": [
        (4, _any(r"what if")),
        (3, _any(r"pros and cons", r"advantages and disadvantages", r"compare", r"comparison",
                 r"differences? between", r"implications?", r"challenges", r"factors", r"analy[sz]e", r"analysis",
                 r"evaluat\w+", r"critical thinking", r"most to blame", r"is it (?:rational|better|worth)",
                 r"why (?:do|does|did|don't|doesn't|might|would|is it that|so many) (?:people|someone|some people|"
                 r"humans|many|a lot of|we|they|landlords)", r"why is it a", r"explain why", r"prioritize",
                 r"how (?:do|does|did|can|could|might) .{0,60}(?:affect|influence|impact|contribute to|shape)")),
        (2, _any(r"expand on")),
        (1, _any(r"impact", r"influence", r"consequences?", r"reasons?", r"rank")),
    ],
    "tips, opinions or advice": [
        (3, _any(r"tips?", r"advice", r"advise", r"should i", r"best way", r"ways? to", r"any suggestions on how",
                 r"what do you think", r"do you think", r"your thoughts", r"strategies for",
                 r"what should (?:i|we) do")),
        (3, _any(r"help me (?:get|become|improve|learn|find a way)", r"(?:improve|increase|develop|reduce) my")),
        (2, _any(r"how (?:do|should|would|can) (?:i|we|one)", r"how do you(?! say)", r"how to", r"how can you",
                 r"(?:the )?steps (?:to|that|required|for|you need)", r"do i need", r"i should", r"instructions for",
                 r"provide instructions", r"i (?:want|would like|'d like) to (?:learn|get|start|become|make)",
                 r"i'm trying to", r"i am trying to", r"step-by-step guide", r"walk me through",
                 r"explain how the game")),
    ],
    "factual information (general or professional)": [
        (1, r"^(?:what|who|where|which|when|is|are|does|do|did|can|how (?:many|much|long|far|big|old))(?![\w])"),
        (1, _any(r"explain", r"tell me about", r"what is", r"what are", r"who (?:is|was)", r"describe",
                 r"list of", r"give me some impression")),
    ],
}

# Tie-break: the more specific task type wins a tie in score; the order is part of the classifier's definition.
PRIORITY = [
    "coding", "mathematical reasoning or calculation", "logical reasoning", "multilinguality or translation",
    "classification", "information extraction or summarization", "linguistics", "editing or rewriting",
    "recommendation", "assisting or creative writing", "roleplay", "awareness of ethics and other risks",
    "history or common practices", "analysis or decision explanation", "tips, opinions or advice",
    "factual information (general or professional)",
]
assert sorted(PRIORITY) == sorted(CATEGORIES) == sorted(RULES)


def _head(instruction: str) -> str:
    """The task part of a prompt: text before its first blank line (an attached input follows that), at most
    500 characters; the start of the whole prompt when that part is a stub ("Answer the following question.")."""
    text = instruction.replace("<br>", "\n").strip()
    head = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    if len(head) < 40:
        head = text
    return " ".join(head[:500].split())


class KeywordClassifier:
    """Weighted whole-word patterns per category on the prompt's head; highest total wins, ties by PRIORITY,
    "factual information" when nothing matches. Deterministic, offline, nothing downloaded."""

    version = "v1"
    name = f"keyword-rules-{version}"

    def __init__(self):
        self._rules = {cat: [(w, re.compile(p, re.IGNORECASE)) for w, p in rules] for cat, rules in RULES.items()}

    def scores(self, instruction: str) -> dict[str, float]:
        """Per-category score of one prompt (only categories with a match), to see why it got its label."""
        head = _head(instruction)
        out = {cat: sum(w for w, rx in rules if rx.search(head)) for cat, rules in self._rules.items()}
        return {cat: s for cat, s in out.items() if s > 0}

    def classify_one(self, instruction: str) -> str:
        scores = self.scores(instruction)
        if not scores:
            return "factual information (general or professional)"
        return max(PRIORITY, key=lambda c: (scores.get(c, 0), -PRIORITY.index(c)))

    def classify(self, instructions: list[str], progress: bool = False) -> list[str]:
        return [self.classify_one(x) for x in instructions]


# ---------------------------------------------------------------------------------------------------------------
# model classifiers


class ApiClassifier:
    """An OpenAI-compatible ``/chat/completions`` endpoint, temperature 0, a few requests in flight at once.

    The key and base URL come from ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` (default OpenAI's) only; the key is
    read when a request is sent, never stored on the object, and redacted from every error message.
    """

    def __init__(self, model: str = "gpt-4o-mini", *, concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 4, retry_wait: float = 2.0, max_tokens: int = 32):
        if not os.environ.get("OPENAI_API_KEY"):
            raise RuntimeError("ApiClassifier needs an API key in the environment variable OPENAI_API_KEY (and "
                               "OPENAI_BASE_URL for a server other than api.openai.com); neither is read from files")
        self.model = model
        self.base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        self.concurrency, self.timeout, self.max_tokens = concurrency, timeout, max_tokens
        self.max_retries, self.retry_wait = max_retries, retry_wait
        self.name = f"openai-api:{model}"
        self.served_models: set[str] = set()  # the "model" field of responses: the dated snapshot that answered

    def __repr__(self):
        return f"ApiClassifier(model={self.model!r}, base_url={self.base_url!r})"

    def _redact(self, text: str) -> str:
        key = os.environ.get("OPENAI_API_KEY", "")
        return text.replace(key, "[redacted]") if key else text

    def complete(self, instruction: str) -> str:
        """The model's raw answer for one prompt; retries rate limits and server errors."""
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": classification_prompt(instruction)}]}).encode()
        for attempt in range(self.max_retries + 1):
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                raise RuntimeError("OPENAI_API_KEY is no longer set")
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                break
            except urllib.error.HTTPError as err:
                detail = self._redact(err.read().decode("utf-8", "replace")[:300])
                if err.code in (429, 500, 502, 503, 504) and attempt < self.max_retries:
                    time.sleep(self.retry_wait * 2 ** attempt)
                    continue
                raise RuntimeError(f"{self.base_url}/chat/completions answered HTTP {err.code}: {detail}") from None
            except urllib.error.URLError as err:
                if attempt < self.max_retries:
                    time.sleep(self.retry_wait * 2 ** attempt)
                    continue
                raise RuntimeError(f"cannot reach {self.base_url}: {self._redact(str(err.reason))}") from None
        if "model" in payload:
            self.served_models.add(payload["model"])
        return payload["choices"][0]["message"]["content"] or ""

    def classify(self, instructions: list[str], progress: bool = True) -> list[str]:
        from tqdm import tqdm

        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(tqdm(pool.map(self.complete, instructions), total=len(instructions), desc="classify",
                                unit="prompt", disable=not progress))
        return [parse_category(a) for a in answers]


class LocalModelClassifier:
    """The same prompt through a ``simplemix.sampling`` backend (greedy), answers parsed by parse_category."""

    def __init__(self, backend, model_name: str = "", max_new_tokens: int = 24):
        self.backend, self.max_new_tokens = backend, max_new_tokens
        self.name = f"local:{getattr(backend, 'name', 'backend')}:{model_name}".rstrip(":")

    @classmethod
    def from_config(cls, model_cfg, sampling_cfg=None, **kwargs) -> "LocalModelClassifier":
        """Load an instruct model (a ModelConfig or sampling.Policy) through the backend a SamplingConfig names."""
        from simplemix.config import SamplingConfig
        from simplemix.sampling import as_policy, load_backend

        policy = as_policy(model_cfg)
        return cls(load_backend(sampling_cfg or SamplingConfig(), policy), policy.model.name_or_path, **kwargs)

    def classify(self, instructions: list[str], progress: bool = False) -> list[str]:
        prompts = [[{"role": "user", "content": classification_prompt(x)}] for x in instructions]
        out = self.backend.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=self.max_new_tokens,
                                    seed=0, progress=progress)
        return [parse_category(samples[0].text) for samples in out]


# ---------------------------------------------------------------------------------------------------------------
# labels on disk


def instruction_sha(instruction: str) -> str:
    """Short content hash of a prompt: the key that joins labels to prompts (never the row position)."""
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:16]


def load_alpaca_instructions() -> list[str]:
    """The 805 AlpacaEval 2.0 instructions in canonical order."""
    from simplemix.evaluation import alpaca_eval_set

    return list(alpaca_eval_set()["instruction"])


class ReadLabels:
    """Labels made by reading: each of the 805 AlpacaEval prompts read in full and labelled under written
    conventions (``read_labels.jsonl``, joined on the prompt's hash). A prompt without a read label, e.g. a
    training prompt, gets the keyword rules' label; ``fell_back`` counts those of the last call."""

    version = "v1"
    name = f"read-{version}"

    def __init__(self, path: str | Path = READ_LABELS, fallback=None):
        self.path = Path(path)
        self.labels = {row["instruction_sha"]: row["category"] for row in load_read_labels(self.path)}
        self.fallback = fallback or KeywordClassifier()
        self.fell_back = 0

    def classify(self, instructions: list[str], progress: bool = False) -> list[str]:
        shas = [instruction_sha(x) for x in instructions]
        unread = [i for i, sha in enumerate(shas) if sha not in self.labels]
        guesses = self.fallback.classify([instructions[i] for i in unread], progress=progress) if unread else []
        guessed = dict(zip(unread, guesses, strict=True))
        self.fell_back = len(unread)
        return [guessed[i] if i in guessed else self.labels[sha] for i, sha in enumerate(shas)]


def load_read_labels(path: str | Path = READ_LABELS) -> list[dict]:
    """The read labels: index, instruction_sha, category, optional note and reread. Read by the project's one JSONL
    reader; a bad row is a ``simplemix.data.DataValidationError`` naming file, row and field, and a prompt
    labelled twice is an error, not a silent overwrite."""
    from simplemix.data import DataValidationError, read_jsonl

    rows, seen = read_jsonl(path), {}
    for i, row in enumerate(rows):
        for field in ("index", "instruction_sha", "category"):
            if not isinstance(row, dict) or field not in row:
                raise DataValidationError(str(path), i, field, "missing_field", "no such field")
        if row["category"] not in CATEGORIES and row["category"] != OTHER:
            raise DataValidationError(str(path), i, "category", "unknown_category",
                                      f"{row['category']!r} is not a category")
        if seen.setdefault(row["instruction_sha"], i) != i:
            raise DataValidationError(str(path), i, "instruction_sha", "repeated_prompt",
                                      f"the prompt of row {seen[row['instruction_sha']]} again")
    return rows


def labels_csv(classifier, instructions: list[str], date: str) -> str:
    """The labels file's text: index, instruction_sha, category, classifier, date."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "instruction_sha", "category", "classifier", "date"])
    for i, (text, cat) in enumerate(zip(instructions, classifier.classify(instructions), strict=True)):
        writer.writerow([i, instruction_sha(text), cat, classifier.name, date])
    return buf.getvalue()


def write_labels(path: str | Path = LABELS_CSV, classifier=None, date: str | None = None) -> Path:
    """(Re)generate the labels of the 805 prompts; the read labels and today's date unless given."""
    classifier = classifier or ReadLabels()
    date = date or datetime.date.today().isoformat()
    path = Path(path)
    path.write_text(labels_csv(classifier, load_alpaca_instructions(), date))
    return path


def load_labels(path: str | Path = LABELS_CSV) -> dict[str, str]:
    """The shipped labels as instruction_sha -> category; look prompts up with :func:`categories_of`."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["instruction_sha"]: row["category"] for row in csv.DictReader(f)}


def categories_of(instructions: list[str], labels: dict[str, str] | None = None) -> list[str]:
    """The label of each prompt, joined on its text; a prompt without a label is an error, not a guess."""
    labels = load_labels() if labels is None else labels
    missing = [x[:60] for x in instructions if instruction_sha(x) not in labels]
    if missing:
        raise KeyError(f"{len(missing)} prompts have no category label, e.g. {missing[0]!r}")
    return [labels[instruction_sha(x)] for x in instructions]


def load_hand_labels(path: str | Path = HAND_LABELS) -> list[dict]:
    """Our hand-labelled check set: index, instruction, category, optional note."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def agreement(predicted: list[str], gold: list[str]) -> dict:
    """Accuracy, and precision/recall/support of the paper's four categories."""
    pairs = list(zip(predicted, gold, strict=True))
    out = {"n": len(pairs), "accuracy": sum(p == g for p, g in pairs) / len(pairs), "per_category": {}}
    for short, cat in PAPER_CATEGORIES.items():
        tp = sum(p == cat and g == cat for p, g in pairs)
        n_pred, n_gold = sum(p == cat for p, _ in pairs), sum(g == cat for _, g in pairs)
        out["per_category"][short] = {"precision": tp / n_pred if n_pred else float("nan"),
                                      "recall": tp / n_gold if n_gold else float("nan"),
                                      "predicted": n_pred, "gold": n_gold}
    return out


def distribution(categories: list[str]) -> list[tuple[str, int, float]]:
    """(category, count, percent) for every category and "other", most frequent first."""
    counts = {c: 0 for c in [*CATEGORIES, OTHER]}
    for c in categories:
        counts[c if c in counts else OTHER] += 1
    return sorted(((c, n, 100 * n / len(categories)) for c, n in counts.items()), key=lambda t: (-t[1], t[0]))


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default): honest at small n and at 0 or n."""
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} successes of n={n} trials")
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    # at k = 0 or k = n the bound is exactly 0 or 1; floating point would land a hair inside it
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def by_category(predicted: list[str], gold: list[str]) -> list[dict]:
    """Agreement per gold category (every category with a gold label): prompts, agreed, recall with its Wilson
    interval, and how often the category was predicted; sorted by prompts, most first."""
    pairs = list(zip(predicted, gold, strict=True))
    rows = []
    for cat in sorted(set(gold), key=lambda c: (-gold.count(c), c)):
        n, k = gold.count(cat), sum(p == g == cat for p, g in pairs)
        lo, hi = wilson(k, n)
        rows.append({"category": cat, "prompts": n, "agreed": k, "agreement": k / n, "lo": lo, "hi": hi,
                     "predicted": predicted.count(cat)})
    return rows
