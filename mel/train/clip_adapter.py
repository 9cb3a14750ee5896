"""`mel train adapter`: train AMELI's residual CLIP image adapter (:mod:`mel.ameli.clip_adapter`) contrastively.

Pairs: every review image of a training mention whose gold product is in the KB and has images, paired with one of
the gold product's images (the k-th review image with product image ``k mod n``); with an
:class:`~mel.datasets.ameli.AmeliDataset` all review images are used, otherwise ``Mention.image``. Images are embedded
once with the frozen image encoder (``models.image_encoder``); only the adapter trains.

Loss: symmetric InfoNCE with in-batch negatives, ``logits = A(m) A(e)^T / temperature``
(``train.adapter.temperature``); pairs of the same product in one batch are not used as each other's negatives.
Step ``s`` takes the ``s``-th slice of one seeded permutation per pass over the pairs, a function of the step alone,
so a resumed run takes exactly the batches the uninterrupted run would have.

Checkpoints (adapter + optimizer state, step, losses, and what they were made from) are written atomically to
``<out>.checkpoint.pt`` beside the output every ``train.adapter.checkpoint_every`` steps and at the end;
``--resume`` continues
from it (up to the new ``--steps``), refusing a checkpoint made from other pairs or settings. The adapter folder
(``adapter.pt`` + ``mel_clip_adapter.json``) appears only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.errors import ArtifactMismatch, ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np

    from mel.config import Config
    from mel.datasets.base import Dataset
    from mel.encoders.base import ImageEncoder

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".checkpoint.pt"


@dataclass
class AdapterPairs:
    """Embedded training pairs: ``mention[i]`` (a review image) goes with ``entity[i]`` (an image of ``owners[i]``)."""

    mention: np.ndarray
    entity: np.ndarray
    owners: list[str]
    image_encoder_id: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.owners)

    @property
    def dim(self) -> int:
        return int(self.mention.shape[1])

    def fingerprint(self) -> str:
        """Content hash of the pairs (a checkpoint resumes only on the same data)."""
        import numpy as np

        h = hashlib.sha256()
        h.update(self.image_encoder_id.encode())
        h.update("\x00".join(self.owners).encode())
        h.update(np.ascontiguousarray(self.mention, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.entity, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]


def collect_image_pairs(dataset: Dataset, split: str, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(review image path, gold product image path, gold id) for the split's first ``limit`` mentions (module doc)."""
    images: dict[str, tuple[str, ...]] = getattr(dataset, "mention_images", {}) or {}
    out: list[tuple[str, str, str]] = []
    for m in dataset.split(split)[:limit]:
        if m.gold is None or m.gold not in dataset.kb:
            continue
        product = dataset.kb.get(m.gold).images
        review = images.get(m.id) or ((m.image,) if m.image else ())
        if not product or not review:
            continue
        out.extend((r, product[k % len(product)], m.gold) for k, r in enumerate(review))
    return out


def embed_pairs(pairs: Sequence[tuple[str, str, str]], encoder: ImageEncoder, chunk: int = 256) -> AdapterPairs:
    """Embed each distinct image once (``chunk`` decoded at a time); pairs with an undecodable image are skipped
    and counted in ``skipped``."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    paths = list(dict.fromkeys(p for a, b, _ in pairs for p in (a, b)))
    vecs: dict[str, np.ndarray] = {}
    bad: set[str] = set()
    for start in range(0, len(paths), chunk):
        batch, ims = [], []
        for p in paths[start:start + chunk]:
            try:
                with Image.open(p) as im:
                    ims.append(im.convert("RGB"))
                batch.append(p)
            except (OSError, UnidentifiedImageError):
                bad.add(p)
        if ims:
            for p, v in zip(batch, encoder.encode(ims)):
                vecs[p] = np.asarray(v, dtype=np.float32)
    kept = [(a, b, o) for a, b, o in pairs if a in vecs and b in vecs]
    dim = encoder.dim
    m = np.stack([vecs[a] for a, _, _ in kept]) if kept else np.zeros((0, dim), np.float32)
    e = np.stack([vecs[b] for _, b, _ in kept]) if kept else np.zeros((0, dim), np.float32)
    if bad:
        log.warning("%d image(s) could not be decoded (e.g. %s): %d pair(s) skipped", len(bad), sorted(bad)[0],
                    len(pairs) - len(kept))
    return AdapterPairs(m, e, [o for _, _, o in kept], encoder.id,
                        {"undecodable_images": len(bad), "pairs_skipped": len(pairs) - len(kept)})


def frozen_parameter_count(encoder: Any) -> int:
    """Parameters of the frozen image tower (open_clip: ``model.visual``); 0 when the encoder does not expose them."""
    model = getattr(encoder, "_model", None)
    tower = getattr(model, "visual", model)
    params = getattr(tower, "parameters", None)
    return int(sum(p.numel() for p in params())) if callable(params) else 0


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of step ``step``: consecutive slices of one seeded permutation per pass over ``n`` pairs."""
    import numpy as np

    size = min(batch_size, n)
    out: list[int] = []
    pos = step * size
    while len(out) < size:
        epoch, offset = divmod(pos, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(size - len(out), n - offset)
        out.extend(int(i) for i in order[offset:offset + take])
        pos += take
    return out


def info_nce(a_m: Any, a_e: Any, owner_ids: Any, temperature: float) -> Any:
    """Symmetric InfoNCE over a batch: row i's positive is column i; columns of the same owner are masked out."""
    import torch

    logits = a_m @ a_e.T / temperature
    same = owner_ids[:, None] == owner_ids[None, :]
    eye = torch.eye(len(owner_ids), dtype=torch.bool)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(owner_ids))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


def checkpoint_path(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser().resolve()
    return out.parent / f"{out.name}{CHECKPOINT_SUFFIX}"


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    from mel.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train_adapter(pairs: AdapterPairs, out_dir: str | Path, *, alpha: float, temperature: float, steps: int,
                  batch_size: int = 64, lr: float = 1e-3, seed: int = 0, resume: bool = False,
                  overwrite: bool = False, checkpoint_every: int = 100, log_every: int = 10,
                  frozen_params: int = 0, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue training) an adapter for ``steps`` steps in all; save it to ``out_dir``.
    Returns the report (also the adapter's ``mel_clip_adapter.json`` record)."""
    if len(pairs) < 2:
        raise InputError(f"{len(pairs)} training pair(s): in-batch contrastive training needs at least 2 (review "
                         "images of mentions whose gold product has images)")
    if steps < 1 or batch_size < 2 or lr <= 0 or checkpoint_every < 1 or log_every < 1:
        raise InputError(f"steps >= 1, batch_size >= 2, lr > 0, checkpoint_every/log_every >= 1 required (got "
                         f"{steps}, {batch_size}, {lr}, {checkpoint_every}, {log_every})")
    out = Path(out_dir).expanduser().resolve()
    ckpt = checkpoint_path(out)
    if out.exists() and not (resume or overwrite):
        raise InputError(f"{out} already exists; pass --resume to continue its training, --overwrite to replace it, "
                         "or choose another --out")

    import numpy as np
    import torch

    from mel.ameli.clip_adapter import adapter_module, save_clip_adapter, trainable_parameters

    t0 = time.perf_counter()
    settings = {"image_encoder_id": pairs.image_encoder_id, "dim": pairs.dim, "alpha": float(alpha),
                "temperature": float(temperature), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
                "train_pairs": len(pairs), "pairs_fingerprint": pairs.fingerprint()}
    torch.manual_seed(seed)
    module = adapter_module(pairs.dim, alpha)
    optim = torch.optim.AdamW(module.parameters(), lr=lr)
    start, losses = 0, []
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        differ = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
        if differ:
            raise ArtifactMismatch(f"checkpoint {ckpt} was made with other pairs or settings "
                                   f"({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in differ.items())}); train "
                                   "without --resume (and --overwrite), or restore those settings")
        module.load_state_dict(state["adapter"])
        optim.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
        log.info("resuming adapter training from %s at step %d", ckpt, start)
        if start >= steps:
            log.info("checkpoint is at step %d >= %d steps: nothing to train", start, steps)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from step 0", ckpt)
    trainable = trainable_parameters(module)
    total = trainable + frozen_params
    log.info("training CLIP adapter: %d pairs, dim %d, %d trainable of %d parameters (%.3f%%), steps %d..%d",
             len(pairs), pairs.dim, trainable, total, 100 * trainable / total, start + 1, steps)

    m_all = torch.from_numpy(np.ascontiguousarray(pairs.mention, dtype=np.float32))
    e_all = torch.from_numpy(np.ascontiguousarray(pairs.entity, dtype=np.float32))
    owner_index = {o: i for i, o in enumerate(dict.fromkeys(pairs.owners))}
    owners = torch.tensor([owner_index[o] for o in pairs.owners], dtype=torch.long)

    def checkpoint(step: int) -> None:
        _save_checkpoint(ckpt, {"adapter": module.state_dict(), "optimizer": optim.state_dict(), "step": step,
                                "losses": losses, "settings": settings})

    module.train()
    for step in range(start, steps):
        idx = torch.tensor(batch_indices(len(pairs), step, batch_size, seed))
        loss = info_nce(module(m_all[idx]), module(e_all[idx]), owners[idx], temperature)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"adapter loss is {losses[-1]} at step {step + 1}; lower the learning rate")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.info("adapter step %d/%d loss %.4f", step + 1, steps, losses[-1])
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(step + 1)
    module.eval()
    done = max(start, steps) if start >= steps else steps
    checkpoint(done)
    report: dict[str, Any] = {
        **(extra_meta or {}), **settings, "steps": done, "losses": losses, "resumed_from_step": start if resume else 0,
        "trainable_params": trainable, "frozen_params": frozen_params, "trainable_share": trainable / total,
        "skipped": pairs.skipped, "torch_version": torch.__version__, "seconds": round(time.perf_counter() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checkpoint": str(ckpt),
    }
    report["path"] = str(save_clip_adapter(module, out, report))
    return report


# ------------------------------------------------------------------------------------------ command
def run_train_adapter(cfg: Config, *, dataset: str, out: str, split: str = "train", data_dir: str | None = None,
                      resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """`mel train adapter`: collect and embed the pairs of ``dataset``/``split`` with ``models.image_encoder``, train
    with ``train.adapter`` and save to ``out``. Returns the report."""
    from mel import compat

    compat.prepare()
    from mel.datasets import load_dataset
    from mel.encoders import build_image_encoder

    if not cfg.models.image_encoder.enabled:
        raise ConfigError("`mel train adapter` embeds images: set models.image_encoder.enabled=true (and its model / "
                          "pretrained), the same image encoder the index uses")
    t = cfg.train.adapter
    encoder = build_image_encoder(cfg.models.image_encoder)
    assert encoder is not None
    ds = load_dataset(dataset, data_dir)
    raw = collect_image_pairs(ds, split, t.limit)
    log.info("%s/%s: %d (review image, product image) pairs", dataset, split, len(raw))
    pairs = embed_pairs(raw, encoder)
    per_epoch = max(1, math.ceil(len(pairs) / t.batch_size))
    steps = t.steps if t.steps is not None else max(1, math.ceil(t.epochs * per_epoch))
    return train_adapter(
        pairs, out, alpha=t.ratio, temperature=t.temperature, steps=steps, batch_size=t.batch_size, lr=t.lr,
        seed=t.seed, resume=resume, overwrite=overwrite, checkpoint_every=t.checkpoint_every, log_every=t.log_every,
        frozen_params=frozen_parameter_count(encoder),
        extra_meta={"dataset": dataset, "split": split, "kb_hash": ds.kb.content_hash(), "config_hash": cfg.hash()})
