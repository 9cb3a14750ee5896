"""LoRA adapters with peft: create one on a causal LM, optionally train a few steps on (prompt, answer) pairs,
save it where vLLM can load it per request.

vLLM constraints honoured here: LoRA on linear projections only (no ``modules_to_save``, no embedding layers
saved), rank within the engine's ``max_lora_rank``. The folder also gets ``mel_adapter.json`` recording how it
was made (base model and its architecture fingerprint, rank, steps, losses), which engines check.
The loss is on the answer tokens only. Training checkpoints and resumes (``checkpoint_dir``, ``resume``);
``mel.train.selector`` builds the multiple-choice pairs of the UniMEL selector and calls it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mel.atomic import publish_dir
from mel.errors import InputError
from mel.llm.adapters import ADAPTER_META

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _check_pairs(train_pairs: list[tuple[str, str]] | None, steps: int) -> list[tuple[str, str]]:
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return list(train_pairs or [])
    if not train_pairs:
        raise InputError(f"steps={steps} needs train_pairs (a list of (prompt, answer) pairs)")
    for i, pair in enumerate(train_pairs):
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair) or not pair[1]):
            raise InputError(f"train pair {i} must be (prompt: str, answer: non-empty str), got {pair!r}")
    return [(p, a) for p, a in train_pairs]


def _encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], append_eos: bool) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 outside the answer tokens)."""
    import torch

    rows, labels = [], []
    for prompt, answer in pairs:
        p_ids = tokenizer.encode(prompt, add_special_tokens=False)
        a_ids = tokenizer.encode(answer, add_special_tokens=False)
        if append_eos and tokenizer.eos_token_id is not None:
            a_ids = a_ids + [tokenizer.eos_token_id]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labels, strict=True)):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        lab[i, :len(y)] = torch.tensor(y)
    return ids, mask, lab


def _batch_indices(n: int, step: int, batch_size: int, seed: int, shuffle: bool) -> list[int]:
    """The pair indices of training step ``step`` (0-based): consecutive slices of one seeded permutation per pass
    over the data (the identity when ``shuffle`` is off). A function of the step alone, so a resumed run takes
    exactly the batches the uninterrupted run would have taken."""
    import numpy as np

    size = min(batch_size, n)
    out: list[int] = []
    pos = step * size
    while len(out) < size:
        epoch, offset = divmod(pos, n)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        take = min(size - len(out), n - offset)
        out.extend(int(i) for i in order[offset:offset + take])
        pos += take
    return out


SCHEDULES = ("constant", "cosine")


def lr_at(step: int, steps: int, lr: float, schedule: str, warmup: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``: linear warm-up over ``warmup`` steps, then
    ``constant`` or a ``cosine`` decay to a tenth of ``lr``. A function of the step alone (resume-safe)."""
    if schedule not in SCHEDULES:
        raise InputError(f"unknown lr schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant" or steps <= warmup + 1:
        return lr
    t = (step - warmup) / max(1, steps - warmup - 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pairs_hash(pairs: Sequence[tuple[str, str]]) -> str:
    """Content hash of the training pairs (a checkpoint is only resumed on the same data)."""
    import hashlib

    h = hashlib.sha256()
    for prompt, answer in pairs:
        h.update(prompt.encode())
        h.update(b"\x00")
        h.update(answer.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


CHECKPOINT_STATE = "state.json"


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(d for d in ckpt_root.glob("step-*") if (d / CHECKPOINT_STATE).is_file()) if ckpt_root.is_dir() else []
    return done[-1] if done else None


def _write_checkpoint(ckpt_root: Path, model: Any, optim: Any, state: dict[str, Any], keep: int) -> Path:
    """``<ckpt_root>/step-NNNNNNNN``: adapter weights, optimizer state and ``state.json`` (written last, inside a temp
    folder renamed into place), so a folder with ``state.json`` is always complete. Older ones beyond ``keep`` go."""
    import torch

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state['step']:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=ckpt_root))
    try:
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        torch.save(optim.state_dict(), tmp / "optimizer.pt")
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(state, indent=2) + "\n")
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    complete = sorted(d for d in ckpt_root.glob("step-*") if (d / CHECKPOINT_STATE).is_file())
    for old in complete[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_init_adapter(model: Any, path: str, *, fingerprint: str, rank: int, alpha: int,
                       target_modules: Sequence[str]) -> dict[str, str]:
    """Load the LoRA weights of the adapter folder ``path`` into the fresh peft ``model``; refuse an adapter made
    for another base model or with another shape. Returns what the new adapter records of it."""
    import hashlib

    from peft import set_peft_model_state_dict

    from mel.errors import ArtifactMismatch
    from mel.llm.adapters import ADAPTER_WEIGHTS, check_lora_adapter

    src = Path(path).expanduser().resolve()
    acfg = check_lora_adapter(src, max_rank=1 << 30, base_fingerprint=fingerprint)  # shape checked below
    theirs = {"rank": acfg.get("r"), "alpha": acfg.get("lora_alpha"),
              "target_modules": sorted(acfg.get("target_modules") or [])}
    ours = {"rank": rank, "alpha": alpha, "target_modules": sorted(target_modules)}
    differ = sorted(k for k in ours if theirs[k] != ours[k])
    if differ:
        raise ArtifactMismatch(f"init adapter {src} has other {', '.join(differ)} than this training "
                               f"({', '.join(f'{k}={theirs[k]} vs {ours[k]}' for k in differ)}); set the training's "
                               "rank, alpha and target_modules to the adapter's, or start from zero")
    weights = next(src / w for w in ADAPTER_WEIGHTS if (src / w).is_file())
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        import torch

        state = torch.load(weights, weights_only=True)
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ArtifactMismatch(f"init adapter {src}: weights this model has no place for ({unexpected[:3]}...); "
                               "was it made for another architecture?")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    log.info("LoRA weights initialised from %s (%s)", src, digest)
    return {"path": str(src), "weights_sha256": digest}


def save_lora_adapter(base_model_dir: str, out_dir: str, *, rank: int = 8, alpha: int = 16,
                      target_modules: Sequence[str] = DEFAULT_TARGETS,
                      train_pairs: list[tuple[str, str]] | None = None, steps: int = 0, lr: float = 1e-4,
                      seed: int = 0, batch_size: int = 8, dropout: float = 0.0, append_eos: bool = True,
                      overwrite: bool = False, shuffle: bool = False, checkpoint_dir: str | None = None,
                      checkpoint_every: int = 0, keep_checkpoints: int = 2, resume: bool = False,
                      log_every: int = 10, extra_meta: dict[str, Any] | None = None,
                      evaluate: Callable[[Any, Any], dict[str, Any]] | None = None,
                      eval_every: int = 0, schedule: str = "constant", warmup_steps: int = 0,
                      init_adapter: str | None = None) -> dict[str, Any]:
    """Create (and with ``steps > 0`` train) a LoRA adapter on ``base_model_dir``; save it to ``out_dir``.

    Step ``s`` trains on the batch :func:`_batch_indices` gives (consecutive pairs, cycling; a seeded permutation
    per pass with ``shuffle``). With ``checkpoint_dir`` and ``checkpoint_every > 0``, every that many steps the
    adapter, optimizer and losses are saved there (atomically; ``keep_checkpoints`` newest kept); ``resume``
    continues from the newest one, which must have been made with the same base model, data and settings
    (else :class:`ArtifactMismatch`). The learning rate follows :func:`lr_at` (``schedule``, ``warmup_steps``).
    ``append_eos`` ends each answer with the EOS token, as the engine generates it
    after a constrained label. The adapter folder appears only when complete. Returns a report: path,
    trainable/total parameters and their share, per-step losses, settings (also saved as ``mel_adapter.json``,
    with ``extra_meta`` merged in). ``evaluate(model, tokenizer)``: called on the fresh adapter (equal to the base
    model: LoRA starts at zero) and on the trained one; its results are saved as ``evaluation.before`` / ``.after``.
    ``init_adapter``: start from this adapter's weights instead of zero (e.g. one trained on another KB: the skill
    of reading the options carries over); it must have been made on the same base model with the same rank, alpha
    and target modules. It is recorded (path and weights hash), and "before" then scores it.
    """
    pairs = _check_pairs(train_pairs, steps)
    if rank < 1 or alpha <= 0 or lr <= 0 or batch_size < 1:
        raise InputError(f"rank, alpha, lr and batch_size must be positive (got {rank}, {alpha}, {lr}, {batch_size})")
    if warmup_steps < 0:
        raise InputError(f"warmup_steps must be >= 0, got {warmup_steps}")
    lr_at(0, max(steps, 1), lr, schedule, warmup_steps)  # refuses an unknown schedule before any loading
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another folder or pass overwrite=True")
    base = Path(base_model_dir).expanduser().resolve()
    if not (base / "config.json").is_file():
        raise InputError(f"base model {base} is not a Hugging Face model folder (no config.json)")
    if resume and checkpoint_dir is None:
        raise InputError("resume needs checkpoint_dir (where the checkpoints of the run to continue are)")

    from mel import compat

    compat.prepare()
    import peft
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mel.errors import ArtifactMismatch
    from mel.models.fingerprint import architecture_fingerprint

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        raise InputError(f"target modules {missing} are not in {base} (module names include: "
                         f"{sorted(n for n in present if n.endswith('proj'))})")
    lora_cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                          bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    fingerprint = architecture_fingerprint(base)
    settings = {"base_fingerprint": fingerprint, "rank": rank, "alpha": alpha, "target_modules": list(target_modules),
                "lr": lr, "seed": seed, "batch_size": batch_size, "dropout": dropout, "append_eos": append_eos,
                "shuffle": shuffle, "pairs_hash": pairs_hash(pairs), "train_pairs": len(pairs), "schedule": schedule,
                "warmup_steps": warmup_steps}
    if init_adapter is not None:
        settings["init_adapter"] = _load_init_adapter(model, init_adapter, fingerprint=fingerprint, rank=rank,
                                                      alpha=alpha, target_modules=target_modules)

    evaluation: dict[str, Any] = {}
    if evaluate is not None:
        model.eval()
        evaluation["before"] = evaluate(model, tokenizer)
        log.info("before training: %s", evaluation["before"])
    losses: list[float] = []
    train_seconds = 0.0
    start_step = 0
    ckpt_root = Path(checkpoint_dir).expanduser().resolve() if checkpoint_dir else None
    if steps > 0:
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        latest = _latest_checkpoint(ckpt_root) if (resume and ckpt_root is not None) else None
        if latest is not None:
            state = json.loads((latest / CHECKPOINT_STATE).read_text())
            differ = sorted(k for k, v in settings.items() if state.get("settings", {}).get(k) != v)
            if differ:
                raise ArtifactMismatch(f"checkpoint {latest} was made with other {', '.join(differ)} than this run; "
                                       "resume with the same data and settings, or start without resume")
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(latest / "adapter_model.safetensors")))
            optim.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
            start_step, losses = int(state["step"]), list(state["losses"])
            log.info("resuming LoRA training from %s (step %d of %d)", latest, start_step, steps)
        model.train()
        t_train = time.perf_counter()
        for step in range(start_step, steps):
            batch = [pairs[i] for i in _batch_indices(len(pairs), step, batch_size, seed, shuffle)]
            ids, mask, labels = _encode_pairs(tokenizer, batch, append_eos)
            for group in optim.param_groups:
                group["lr"] = lr_at(step, steps, lr, schedule, warmup_steps)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if done % max(1, log_every) == 0 or done == steps:
                recent = losses[-max(1, log_every):]
                rate = (done - start_step) / max(1e-9, time.perf_counter() - t_train)
                log.info("lora step %d/%d loss %.4f (mean of last %d: %.4f), %.2f examples/s, ETA %.0fs", done,
                         steps, losses[-1], len(recent), sum(recent) / len(recent), rate * min(batch_size, len(pairs)),
                         (steps - done) / max(rate, 1e-9))
            if evaluate is not None and eval_every > 0 and done % eval_every == 0 and done != steps:
                model.eval()
                evaluation.setdefault("by_step", {})[str(done)] = evaluate(model, tokenizer)
                log.info("after step %d: %s", done, evaluation["by_step"][str(done)])
                model.train()
            if ckpt_root is not None and checkpoint_every > 0 and (done % checkpoint_every == 0 or done == steps):
                _write_checkpoint(ckpt_root, model, optim, {"step": done, "steps": steps, "losses": losses,
                                                            "settings": settings}, keep_checkpoints)
        train_seconds = time.perf_counter() - t_train
        model.eval()
    if evaluate is not None:
        model.eval()
        evaluation["after"] = evaluate(model, tokenizer)
        log.info("after training: %s", evaluation["after"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        cfg_path = tmp / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text())
        if adapter_cfg.get("modules_to_save"):
            raise RuntimeError(f"peft saved modules_to_save={adapter_cfg['modules_to_save']}; vLLM cannot load it")
        adapter_cfg["base_model_name_or_path"] = str(base)
        cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
        report: dict[str, Any] = {
            "path": str(out),
            "base_model": str(base),
            **settings,
            "steps": steps,
            "resumed_from_step": start_step,
            "train_seconds": round(train_seconds, 1),
            "losses": losses,
            "trainable_params": trainable,
            "total_params": total,
            "trainable_share": trainable / total,
            "peft_version": peft.__version__,
            "seconds": round(time.perf_counter() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra_meta or {}),
        }
        if evaluation:
            report["evaluation"] = evaluation
        (tmp / ADAPTER_META).write_text(json.dumps(report, indent=2) + "\n")
        tmp.chmod(0o755)
        publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved LoRA adapter %s (%d trainable of %d params, %.3f%%)", out, trainable, total,
             100 * trainable / total)
    return report


MERGE_META = "mel_merged_lora.json"


def merge_lora_adapter(base_model_dir: str, adapter_dir: str, out_dir: str, *, dtype: str = "float32",
                       overwrite: bool = False) -> str:
    """Fold a LoRA adapter into the base weights and save a plain HF folder (peft ``merge_and_unload``).

    Serve the merged folder as ``models.llm.model`` when one adapter is used for every request: vLLM's CPU
    LoRA kernels gather per-token weight copies, which makes per-request LoRA prefill ~10-20x slower than the
    base model on CPU. The folder records the adapter it came from in ``mel_merged_lora.json``.
    """
    from mel.llm.adapters import read_adapter_config

    read_adapter_config(adapter_dir)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another folder or pass overwrite=True")
    base = Path(base_model_dir).expanduser().resolve()
    if not (base / "config.json").is_file():
        raise InputError(f"base model {base} is not a Hugging Face model folder (no config.json)")

    from mel import compat

    compat.prepare()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise InputError(f"dtype {dtype!r} is not a torch floating dtype")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().to(torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # keep fields the base folder carries explicitly (e.g. rope_theta written by the GGUF conversion)
        base_cfg = json.loads((base / "config.json").read_text())
        new_cfg = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**base_cfg, **new_cfg, "dtype": dtype}, indent=2, sort_keys=True))
        meta = {"base_model": str(base), "adapter": str(Path(adapter_dir).resolve()), "dtype": dtype,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        adapter_meta = Path(adapter_dir) / ADAPTER_META
        if adapter_meta.is_file():
            meta["adapter_meta"] = json.loads(adapter_meta.read_text())
        (tmp / MERGE_META).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
        publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
