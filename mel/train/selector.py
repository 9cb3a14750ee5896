"""UniMEL's selector training (``mel train selector``): multiple-choice prompts from labelled mentions, LoRA with peft.

For each training mention whose gold entity is in the KB, the options are what the selector would be shown: the
candidates the method's steps before ``select`` produce (retrieval, then cross-encoder re-ranking when it is on), the
top ``selection.candidates``. The retrieved non-gold candidates are the hard negatives; when the gold is not among
them it replaces the last one (the gold is always an option in training). Options are shuffled per mention (seeded)
unless ``train.selector.shuffle_options`` is off, and the target is the gold's letter (the loss is on it alone).
The prompt is :func:`mel.stages.select.selection_prompt` with the model's chat template, the function the selector
calls when serving, so training and inference cannot drift.

Mentions that cannot teach a choice (gold ``None`` or not in the KB: NIL mentions; or fewer than two options) are
counted and skipped, never silently. A dev set (the dataset's ``dev`` split, or a share of the training mentions
carved out by a stable hash of the id, disjoint from train) gives the accuracy of the LLM alone on dev mentions
whose gold is among the options (options in retrieval order, as served; and shuffled, which shows whether it reads
them), before and after training, next to the retrieval's own H@1 on the same mentions.

The adapter folder (peft, loadable by vLLM: LoRA on linear projections only, no ``modules_to_save``, rank within
the engine's ``max_lora_rank``) records in ``mel_adapter.json`` the base model and its fingerprint, the data, the
KB hash and index, the prompt version, the steps, losses and dev accuracy. Checkpoints every
``checkpoint_every`` steps go to ``<out>.checkpoints/``; ``--resume`` continues from the newest one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.errors import InputError
from mel.stages.select import LETTERS, PROMPT_VERSION, selection_prompt
from mel.types import Candidate, Mention

if TYPE_CHECKING:
    from mel.config import Config, SelectionConfig
    from mel.index.artifact import IndexArtifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectorExample:
    """One prompt: the chat-formatted prompt, the letters offered, the gold's letter, and where the candidates
    ranked the gold (1-based; ``None`` when it was not retrieved and was put in as an option)."""

    mention_id: str
    prompt: str
    letters: tuple[str, ...]
    answer: str
    gold_rank: int | None


def option_order(mention_id: str, n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` fixed by (seed, mention id): the same on every run and machine."""
    import numpy as np

    key = int.from_bytes(hashlib.sha256(f"{seed}:{mention_id}".encode()).digest()[:8], "little")
    return [int(i) for i in np.random.default_rng(key).permutation(n)]


def build_examples(mentions: Sequence[Mention], candidate_lists: Sequence[list[Candidate]],
                   entity_text: Callable[[str], str], entity_name: Callable[[str], str], kb_ids: Collection,
                   cfg: SelectionConfig, format_chat: Callable[[str, str], str], *, shuffle: bool = True,
                   seed: int = 0, insert_gold: bool = True) -> tuple[list[SelectorExample], dict[str, int]]:
    """Prompts for ``mentions`` given their candidates, and counts of what happened to each mention: ``trained``,
    ``gold_retrieved``, ``gold_inserted``, ``not_in_kb`` (gold None or outside the KB: NIL mentions),
    ``gold_missed`` (not retrieved and ``insert_gold`` off), ``single_option`` (fewer than two options)."""
    if len(mentions) != len(candidate_lists):
        raise InputError(f"{len(mentions)} mentions but {len(candidate_lists)} candidate lists")
    out: list[SelectorExample] = []
    stats = {"mentions": len(mentions), "trained": 0, "gold_retrieved": 0, "gold_inserted": 0, "not_in_kb": 0,
             "gold_missed": 0, "single_option": 0}
    n = cfg.candidates
    for m, cands in zip(mentions, candidate_lists, strict=True):
        if m.gold is None or m.gold not in kb_ids:
            stats["not_in_kb"] += 1
            continue
        head = list(cands[:n])
        rank = next((i + 1 for i, c in enumerate(head) if c.entity_id == m.gold), None)
        if len(head) < 2 and (rank is not None or len(head) < 1):
            stats["single_option"] += 1
            continue
        if rank is None:
            if not insert_gold:
                stats["gold_missed"] += 1
                continue
            gold = Candidate(m.gold, entity_name(m.gold), 0.0)
            head = (head[: n - 1] if len(head) >= n else head) + [gold]
            stats["gold_inserted"] += 1
        else:
            stats["gold_retrieved"] += 1
        if shuffle:
            head = [head[i] for i in option_order(m.id, len(head), seed)]
        prompt, letters = selection_prompt(m, head, entity_text, cfg, format_chat)
        answer = letters[next(i for i, c in enumerate(head) if c.entity_id == m.gold)]
        out.append(SelectorExample(m.id, prompt, tuple(letters), answer, rank))
        stats["trained"] += 1
    return out, stats


def chat_formatter(tokenizer: Any) -> Callable[[str, str], str]:
    """``format_chat(system, user)`` with the tokenizer's chat template, as :meth:`VLLMEngine.format_chat` does."""

    def fmt(system: str, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return fmt


def letter_accuracy(examples: Sequence[SelectorExample]) -> Callable[[Any, Any], dict[str, Any]]:
    """An ``evaluate(model, tokenizer)`` hook: the share (percent) of ``examples`` whose gold letter gets the highest
    next-token logit among the letters offered (what the engine's constrained choice picks greedily)."""

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        import torch

        if not examples:
            return {"examples": 0, "accuracy": None}
        letter_ids = {}
        for letter in LETTERS:
            ids = tokenizer.encode(letter, add_special_tokens=False)
            letter_ids[letter] = ids[0]
        correct = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            for ex in examples:
                ids = torch.tensor([tokenizer.encode(ex.prompt, add_special_tokens=False)])
                logits = model(input_ids=ids).logits[0, -1]
                scores = [float(logits[letter_ids[x]]) for x in ex.letters]
                correct += ex.letters[scores.index(max(scores))] == ex.answer
        return {"examples": len(examples), "accuracy": round(100.0 * correct / len(examples), 2),
                "seconds": round(time.perf_counter() - t0, 1)}

    return evaluate


def dev_accuracy(in_order: Sequence[SelectorExample],
                 shuffled: Sequence[SelectorExample]) -> Callable[[Any, Any], dict[str, Any]]:
    """An ``evaluate`` hook scoring the dev prompts twice: options in retrieval order as served (``accuracy``, next
    to retrieval's H@1 on them) and options shuffled (``shuffled_accuracy``): only the second says whether the
    adapter reads the options, since a learned position prior scores ~1/K there."""
    first, second = letter_accuracy(in_order), letter_accuracy(shuffled)

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        a, b = first(model, tokenizer), second(model, tokenizer)
        return {**a, "shuffled_accuracy": b["accuracy"], "seconds": round(a["seconds"] + b.get("seconds", 0.0), 1)}

    return evaluate


def pick_training_mentions(mentions: list[Mention], candidate_lists: list[list[Candidate]], limit: int | None,
                           *, head: int, seed: int, hard_first: bool) -> list[int]:
    """Indices of the mentions to train on (in their original order): all of them without ``limit``; else a seeded
    sample of ``limit``, where with ``hard_first`` up to half are mentions the candidates got wrong (gold retrieved
    below rank 1, or not in the head), which teach most."""
    import numpy as np

    n = len(mentions)
    if limit is None or limit >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    if hard_first:
        hard = [i for i, (m, c) in enumerate(zip(mentions, candidate_lists, strict=True))
                if m.gold is not None and (not c or c[0].entity_id != m.gold)
                and any(x.entity_id == m.gold for x in c[:head])]
        take = min(len(hard), limit // 2)
        chosen = [hard[i] for i in rng.choice(len(hard), size=take, replace=False)] if take else []
    rest = sorted(set(range(n)) - set(chosen))
    more = limit - len(chosen)
    chosen += [rest[i] for i in rng.choice(len(rest), size=more, replace=False)] if more else []
    return sorted(chosen)


def carve_dev(mentions: list[Mention], fraction: float, salt: str = "mel/selector-dev") -> tuple[list[Mention],
                                                                                                list[Mention]]:
    """(train, dev): dev is the mentions whose stable hash of the id falls below ``fraction`` (deterministic,
    disjoint)."""
    from mel.datasets.base import stable_fraction

    dev = [m for m in mentions if stable_fraction(m.id, salt) < fraction]
    ids = {m.id for m in dev}
    return [m for m in mentions if m.id not in ids], dev


def candidates_before_selection(cfg: Config, index_dir: str, mentions: list[Mention], *, batch_size: int = 256,
                                **given: Any) -> tuple[list[list[Candidate]], IndexArtifact]:
    """The candidates of each mention as the method's active steps before ``select`` produce them (retrieval
    [+ re-ranking]); and the index. ``given``: ready-made parts (``text_encoder=``, ``cross_encoder=``)."""
    from mel.methods import registry
    from mel.parts import load_parts
    from mel.runner import run_steps
    from mel.steps.base import MentionState

    registry.load_plugins(cfg.plugins)
    spec = registry.get(cfg.method)
    if "select" not in spec.steps:
        raise InputError(f"method {cfg.method!r} has no select step ({list(spec.steps)}): train the selector of a "
                         "method that selects (e.g. --set method=llm-select)")
    cut = spec.steps.index("select")
    before = [c for c in spec.active_steps(cfg) if spec.steps.index(c.name) < cut]
    needs: set[str] = set()
    for c in before:
        needs |= c.needs
    parts = load_parts(cfg, index_dir, needs | {"index"}, **given)
    steps = [c(cfg, parts) for c in before]
    out: list[list[Candidate]] = []
    t0 = time.perf_counter()
    for a in range(0, len(mentions), batch_size):
        states = run_steps(steps, [MentionState(m) for m in mentions[a:a + batch_size]])
        out.extend(s.candidates for s in states)
        log.info("candidates for %d/%d mentions (%.1f/s)", len(out), len(mentions),
                 len(out) / max(1e-9, time.perf_counter() - t0))
    assert parts.index is not None
    return out, parts.index


def training_data(cfg: Config, *, index_dir: str, dataset: str | None, mentions_path: str | None, split: str,
                  data_dir: str | None) -> tuple[list[Mention], list[Mention], set[str] | None, str]:
    """(train mentions, dev mentions, KB ids they are scored against or None for the index's, a name for the
    report). A dataset's dev split is used when it has one; otherwise dev is carved from the training mentions."""
    if (dataset is None) == (mentions_path is None):
        raise InputError("give exactly one of --dataset (a benchmark's split) or --mentions (a JSONL file with gold)")
    tcfg = cfg.train.selector
    if mentions_path is not None:
        from mel.mentions import read_mentions

        train, dev = carve_dev(list(read_mentions(mentions_path)), tcfg.dev_fraction)
        return train, dev, None, str(Path(mentions_path).resolve())
    from mel.datasets import load_dataset

    ds = load_dataset(str(dataset), data_dir)
    if split not in ds.splits:
        raise InputError(f"dataset {dataset!r} has no split {split!r}; splits: {sorted(ds.splits)}")
    kb_ids = {e.id for e in ds.kb}
    if "dev" in ds.splits and split != "dev":
        return list(ds.splits[split]), list(ds.splits["dev"]), kb_ids, f"{dataset}/{split}"
    train, dev = carve_dev(list(ds.splits[split]), tcfg.dev_fraction)
    return train, dev, kb_ids, f"{dataset}/{split}"


def train_selector(cfg: Config, *, index_dir: str, out: str, dataset: str | None = None,
                   mentions_path: str | None = None, split: str = "train", data_dir: str | None = None,
                   resume: bool = False, overwrite: bool = False, **given: Any) -> dict[str, Any]:
    """Build the prompts of ``dataset``/``split`` (or of the labelled mentions in ``mentions_path``) and train a
    LoRA selector adapter into ``out``; returns the report (also saved as ``<out>/mel_adapter.json``)."""
    from mel.eval import fixed_sample
    from mel.models.sources import resolve_model
    from mel.train.lora import save_lora_adapter

    tcfg = cfg.train.selector
    if tcfg.rank > cfg.models.llm.max_lora_rank:
        raise InputError(f"train.selector.rank ({tcfg.rank}) exceeds models.llm.max_lora_rank "
                         f"({cfg.models.llm.max_lora_rank}): the engine could not serve the adapter")
    out_path = Path(out)
    if out_path.exists() and not (overwrite or resume):
        raise InputError(f"{out_path} already exists; choose another --out, or pass --overwrite / --resume")
    train_all, dev_all, kb_ids, source = training_data(cfg, index_dir=index_dir, dataset=dataset,
                                                       mentions_path=mentions_path, split=split, data_dir=data_dir)
    dev = fixed_sample(dev_all, tcfg.dev_limit, tcfg.seed) if tcfg.dev_limit and dev_all else []
    if tcfg.pool is not None:  # candidates for a seeded pool only; `limit` is chosen from it
        train_all = fixed_sample(train_all, tcfg.pool, tcfg.seed)
    t0 = time.perf_counter()
    cands, index = candidates_before_selection(cfg, index_dir, train_all + dev, **given)
    retrieve_s = time.perf_counter() - t0
    train_cands, dev_cands = cands[: len(train_all)], cands[len(train_all):]
    if kb_ids is None:
        kb_ids = set(index.ids)
    keep = pick_training_mentions(train_all, train_cands, tcfg.limit, head=cfg.selection.candidates,
                                  seed=tcfg.seed, hard_first=tcfg.hard_first)
    mentions, mention_cands = [train_all[i] for i in keep], [train_cands[i] for i in keep]

    from transformers import AutoTokenizer

    base = resolve_model(cfg.models.llm.model, kind="llm", cache_dir=cfg.models.cache_path())
    tokenizer = AutoTokenizer.from_pretrained(base)
    fmt = chat_formatter(tokenizer)
    examples, stats = build_examples(mentions, mention_cands, index.text, index.name, kb_ids, cfg.selection, fmt,
                                     shuffle=tcfg.shuffle_options, seed=tcfg.seed)
    if not examples:
        raise InputError(f"{source}: no mention has a gold entity in the KB and two options: nothing to train on "
                         f"({stats})")
    dev_examples, dev_stats = build_examples(dev, dev_cands, index.text, index.name, kb_ids, cfg.selection, fmt,
                                             shuffle=False, insert_gold=False)
    dev_shuffled, _ = build_examples(dev, dev_cands, index.text, index.name, kb_ids, cfg.selection, fmt,
                                     shuffle=True, seed=tcfg.seed + 1, insert_gold=False)
    steps = tcfg.steps or math.ceil(tcfg.epochs * len(examples) / tcfg.batch_size)
    lengths = sorted(len(tokenizer.encode(e.prompt)) for e in examples)
    if lengths[-1] + 2 > cfg.models.llm.max_model_len:
        raise InputError(f"the longest training prompt has {lengths[-1]} tokens, above models.llm.max_model_len "
                         f"({cfg.models.llm.max_model_len}): lower selection.max_description_chars or candidates")
    log.info("%d training prompts (%s); %d steps of %d; prompt tokens median %d, max %d; %d dev prompts",
             len(examples), stats, steps, tcfg.batch_size, lengths[len(lengths) // 2], lengths[-1], len(dev_examples))
    ranks = [e.gold_rank for e in dev_examples]
    meta = {
        "trained_for": "mel selector (multiple choice)",
        "prompt_version": PROMPT_VERSION,
        "source": source, "examples": len(examples), "example_stats": stats, "pool": len(train_all),
        "dev": {"mentions": len(dev), "examples": len(dev_examples), "example_stats": dev_stats,
                "retrieval_h@1_on_examples": round(100.0 * sum(r == 1 for r in ranks) / len(ranks), 2)
                if ranks else None},
        "selection": cfg.selection.model_dump(mode="json", include={"candidates", "max_description_chars"}),
        "method": cfg.method, "retrieval_rerank": cfg.retrieval.rerank.enabled,
        "index_dir": str(Path(index_dir).resolve()), "kb_hash": index.manifest.kb_hash,
        "index_encoder_id": index.manifest.encoder_id, "index_config_hash": index.manifest.config_hash,
        "training": tcfg.model_dump(mode="json"), "retrieve_seconds": round(retrieve_s, 1),
        "prompt_tokens": {"median": lengths[len(lengths) // 2], "max": lengths[-1]},
    }
    return save_lora_adapter(
        base, str(out_path), rank=tcfg.rank, alpha=tcfg.alpha, target_modules=tcfg.target_modules,
        train_pairs=[(e.prompt, e.answer) for e in examples], steps=steps, lr=tcfg.lr, seed=tcfg.seed,
        batch_size=tcfg.batch_size, dropout=tcfg.dropout, shuffle=True, overwrite=overwrite or resume,
        checkpoint_dir=str(out_path.parent / f"{out_path.name}.checkpoints"), checkpoint_every=tcfg.checkpoint_every,
        keep_checkpoints=tcfg.keep_checkpoints, resume=resume, log_every=tcfg.log_every, extra_meta=meta,
        evaluate=dev_accuracy(dev_examples, dev_shuffled) if dev_examples else None, eval_every=tcfg.eval_every,
        schedule=tcfg.schedule, warmup_steps=tcfg.warmup_steps, append_eos=tcfg.eos_loss,
        init_adapter=tcfg.init_adapter)
