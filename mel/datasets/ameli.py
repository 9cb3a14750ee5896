"""AMELI (Yao et al., "AMELI: Enhancing Multimodal Entity Linking with Fine-Grained Attributes", EACL 2024):
Best Buy product reviews (mentions) linked to product entities that carry attributes and several images.

The record fields follow the released files as the authors' loaders read them (github.com/VT-NLP/Ameli, e.g.
``disambiguation/data_util/inner_util.py``; the paper's appendix K.3 describes the same format):

- **products** (entities): one JSON array; per record ``id`` (number or string), ``product_name``,
  ``product_category`` (optional), ``overview_section.description`` (optional), ``Spec`` -- a list of sections
  ``{"subsection": "Key Specs", "text": [{"specification": "Brand", "value": "Samsung"}, ...]}`` -- and
  ``image_path`` (file names relative to the product image folder). Other fields (``url``, ``reviews``,
  ``similar_product_id``...) are ignored.
- **reviews** (mentions): one JSON array per split; per record ``review_id``, ``header``, ``body``, ``mention``
  (the product mention), ``review_image_path`` (relative to the review image folder) and ``gold_entity_info``
  (``{"id": <product id>, ...}``). Other fields (``attribute``, ``predicted_attribute*``, ``fused_candidate_list``,
  ``nli_score``...) are ignored: they are annotations or outputs of the authors' pipeline.

Folder layout (an assumption where the release's own file names are long and versioned; rename or link them)::

    <root>/ameli/
      products.json                      the product array (release: bestbuy_products_40000_3.4.19_final_format.json)
      product_images/                    product image files
      review_images/ | cleaned_review_images/   review image files
      train.json, dev.json | val.json, test.json                review arrays, or the release layout:
      train/disambiguation/*.json, val/disambiguation/*.json, test/disambiguation/*.json   (one file each)

Mapping to the common model:

- :class:`Entity`: ``id`` = ``str(id)``, ``name`` = ``product_name``, ``description`` = the overview description,
  ``attributes`` = the ``Spec`` items flattened over sections (the first value of a key wins; blank values are left
  out) plus ``Category`` = ``product_category`` when the Spec has no ``Category``; ``images`` = every
  ``image_path`` entry whose file exists (missing files are counted, as the KB reader does).
- :class:`Mention`: ``id`` = ``str(review_id)``, ``surface`` = ``mention`` (a blank one is kept and counted),
  ``context`` = ``"<header>. <body>"`` (the authors' review text), ``image`` = the first existing review image,
  ``gold`` = ``str(gold_entity_info.id)``; a null ``gold_entity_info`` or ``id`` is NIL (kept: never dropped).
  A :class:`Mention` holds one image, so **all** of a review's existing images are kept in
  :attr:`AmeliDataset.mention_images` (mention id -> paths, the first being ``Mention.image``); the CLIP adapter
  trainer uses all of them.
- Splits: ``train``, ``dev`` (``dev.json``, or the release's ``val``), ``test``; a missing dev split is 10% of train
  chosen by a stable hash of the review id. Every record of every split file is kept.

Malformed records raise :class:`InputError` naming the file, the record's index in its JSON array (0-based) and
the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mel.datasets.base import Dataset, read_json, split_stats, stable_fraction
from mel.datasets.registry import register_dataset
from mel.errors import InputError
from mel.fileio import json_type, resolve_path
from mel.kb.model import KB, LoadReport
from mel.types import Entity, Mention

NAME = "ameli"
PRODUCTS_FILE = "products.json"
PRODUCT_IMAGE_DIR = "product_images"
REVIEW_IMAGE_DIRS = ("review_images", "cleaned_review_images")
SPLIT_FILES = {"train": ("train",), "dev": ("dev", "val"), "test": ("test",)}
DEV_FRACTION = 0.10
DEV_SALT = "ameli/dev"
_EXAMPLES = 10


@dataclass
class AmeliDataset(Dataset):
    """A :class:`Dataset` that also keeps every review image: ``mention_images[mention_id]`` lists the existing
    image files of the review in record order (``Mention.image`` is the first)."""

    mention_images: dict[str, tuple[str, ...]] = field(default_factory=dict)


class _Record:
    """One object of a JSON array, for error messages naming file, record index and field."""

    def __init__(self, path: Path, index: int, rec: Any, id_field: str) -> None:
        self.path, self.index = path, index
        if not isinstance(rec, dict):
            raise self.error(f"expected an object, got {json_type(rec)}")
        self.rec = rec
        self.label = f"record #{index}"
        raw = rec.get(id_field)
        if isinstance(raw, (str, int)) and not isinstance(raw, bool):
            self.label += f" ({id_field} {raw!r})"

    def error(self, message: str, field_name: str | None = None) -> InputError:
        label = getattr(self, "label", f"record #{self.index}")
        return InputError(f"{label}: {message}", path=str(self.path), field=field_name)

    def ident(self, name: str) -> str:
        """A required id field: a non-empty string or an integer, returned as a string."""
        if name not in self.rec or self.rec[name] is None:
            raise self.error("required field is missing", name)
        return self._id_value(self.rec[name], name)

    def _id_value(self, value: Any, name: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(f"must be a string or an integer id, got {json_type(value)} {value!r}", name)
        text = str(value)
        if not text.strip():
            raise self.error("must not be empty", name)
        return text

    def text(self, name: str, *, required: bool, allow_blank: bool = True) -> str:
        value = self.rec.get(name)
        if value is None:
            if required:
                raise self.error("required field is missing" if name not in self.rec else "must not be null", name)
            return ""
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {json_type(value)} {value!r}", name)
        if not allow_blank and not value.strip():
            raise self.error("must not be empty", name)
        return value

    def str_list(self, name: str) -> list[str]:
        value = self.rec.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(f"must be a list of strings, got {json_type(value)}", name)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.error(f"must be a non-empty string, got {json_type(item)} {item!r}", f"{name}[{i}]")
        return list(value)


def _array(path: Path) -> list[Any]:
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"expected a JSON array of records, got {json_type(data)}", path=str(path))
    return data


def _spec_attributes(r: _Record) -> tuple[dict[str, str], int]:
    """``Spec`` flattened to key -> value (first value wins); also the number of repeated keys."""
    spec = r.rec.get("Spec")
    if spec is None:
        return {}, 0
    if not isinstance(spec, list):
        raise r.error(f"must be a list of sections, got {json_type(spec)}", "Spec")
    attrs: dict[str, str] = {}
    repeated = 0
    for s, section in enumerate(spec):
        where = f"Spec[{s}]"
        if not isinstance(section, dict):
            raise r.error(f"must be an object with 'subsection' and 'text', got {json_type(section)}", where)
        items = section.get("text")
        if items is None:
            continue
        if not isinstance(items, list):
            raise r.error(f"must be a list of {{specification, value}} objects, got {json_type(items)}",
                          f"{where}.text")
        for j, item in enumerate(items):
            at = f"{where}.text[{j}]"
            if not isinstance(item, dict):
                raise r.error(f"must be an object with 'specification' and 'value', got {json_type(item)}", at)
            key, value = item.get("specification"), item.get("value")
            if not isinstance(key, str) or not key.strip():
                raise r.error(f"must be a non-empty string, got {json_type(key)} {key!r}", f"{at}.specification")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) and value is not None:
                raise r.error(f"must be a string or number, got {json_type(value)}", f"{at}.value")
            text = "" if value is None else str(value).strip()
            if not text:
                continue
            key = key.strip()
            if key in attrs:
                repeated += attrs[key] != text
                continue
            attrs[key] = text
    return attrs, repeated


def _images(paths: list[str], folder: Path, missing: list[str]) -> tuple[str, ...]:
    found = []
    for p in paths:
        absolute = resolve_path(p, folder)
        if os.path.isfile(absolute):
            found.append(absolute)
        else:
            missing.append(absolute)
    return tuple(found)


def _kb(root: Path) -> tuple[KB, dict[str, Any]]:
    path = root / PRODUCTS_FILE
    image_dir = root / PRODUCT_IMAGE_DIR
    entities: list[Entity] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    repeated = 0
    for i, rec in enumerate(_array(path)):
        r = _Record(path, i, rec, "id")
        eid = r.ident("id")
        if eid in seen:
            raise r.error(f"duplicate product id {eid!r} (first at record #{seen[eid]})", "id")
        seen[eid] = i
        name = r.text("product_name", required=True, allow_blank=False)
        overview = rec.get("overview_section")
        description = ""
        if overview is not None:
            if not isinstance(overview, dict):
                raise r.error(f"must be an object, got {json_type(overview)}", "overview_section")
            desc = overview.get("description")
            if desc is not None and not isinstance(desc, str):
                raise r.error(f"must be a string, got {json_type(desc)}", "overview_section.description")
            description = " ".join((desc or "").split())
        attrs, rep = _spec_attributes(r)
        repeated += rep
        category = r.text("product_category", required=False).strip()
        if category and "Category" not in attrs:
            attrs["Category"] = category
        images = _images(r.str_list("image_path"), image_dir, missing)
        entities.append(Entity(id=eid, name=name.strip(), description=description, attributes=attrs, images=images))
    report = LoadReport(source=str(path), entities=len(entities), images=sum(len(e.images) for e in entities),
                        missing_images=missing)
    stats = {
        "entities": len(entities),
        "entity_images": report.images,
        "entity_images_missing": len(missing),
        "entity_images_missing_examples": missing[:_EXAMPLES],
        "entities_without_images": sum(not e.images for e in entities),
        "attributes": sum(len(e.attributes) for e in entities),
        "entities_without_attributes": sum(not e.attributes for e in entities),
        "attribute_keys_with_conflicting_values": repeated,
    }
    return KB(entities, report=report), stats


def _review_image_dir(root: Path) -> Path:
    for name in REVIEW_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root / REVIEW_IMAGE_DIRS[0]


def _split_file(root: Path, split: str) -> Path | None:
    """The review file of a split: ``<name>.json`` at the root, else the one JSON of ``<name>/disambiguation/``."""
    for name in SPLIT_FILES[split]:
        if (root / f"{name}.json").is_file():
            return root / f"{name}.json"
    for name in SPLIT_FILES[split]:
        folder = root / name / "disambiguation"
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file())
            if len(files) > 1:
                raise InputError(f"holds {len(files)} JSON files ({', '.join(p.name for p in files[:4])}...); keep "
                                 f"the one review file of the {split!r} split", path=str(folder))
            if files:
                return files[0]
    return None


def _mentions(path: Path, image_dir: Path, images_out: dict[str, tuple[str, ...]],
              seen: dict[str, str]) -> tuple[list[Mention], dict[str, Any]]:
    out: list[Mention] = []
    missing: list[str] = []
    extra_images = 0
    for i, rec in enumerate(_array(path)):
        r = _Record(path, i, rec, "review_id")
        rid = r.ident("review_id")
        if rid in seen:
            raise r.error(f"duplicate review id {rid!r} (already in {seen[rid]})", "review_id")
        seen[rid] = f"{path.name} record #{i}"
        header = " ".join(r.text("header", required=False).split())
        body = " ".join(r.text("body", required=True).split())
        surface = r.text("mention", required=True)
        if "gold_entity_info" not in rec:
            raise r.error("required field is missing (null means NIL)", "gold_entity_info")
        info = rec["gold_entity_info"]
        gold = None
        if info is not None:
            if not isinstance(info, dict):
                raise r.error(f"must be an object with 'id' (or null: NIL), got {json_type(info)}", "gold_entity_info")
            if info.get("id") is not None:
                gold = r._id_value(info["id"], "gold_entity_info.id")
        images = _images(r.str_list("review_image_path"), image_dir, missing)
        extra_images += max(0, len(images) - 1)
        if header and body:
            context = f"{header} {body}" if header[-1] in ".!?" else f"{header}. {body}"
        else:
            context = header or body
        images_out[rid] = images
        out.append(Mention(id=rid, surface=surface, context=context, image=images[0] if images else None, gold=gold))
    extra = {"source": str(path), "review_images_missing": len(missing),
             "review_images_missing_examples": missing[:_EXAMPLES], "review_images_beyond_first": extra_images}
    return out, extra


@register_dataset(NAME, folder="ameli", marker=PRODUCTS_FILE)
def load_ameli(root: Path) -> AmeliDataset:
    kb, stats = _kb(root)
    image_dir = _review_image_dir(root)
    images: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    splits: dict[str, list[Mention]] = {}
    stats["splits"] = {}
    extras: dict[str, dict[str, Any]] = {}
    for split in SPLIT_FILES:
        path = _split_file(root, split)
        if path is None:
            continue
        splits[split], extras[split] = _mentions(path, image_dir, images, seen)
    if not splits:
        raise InputError("no review file found: expected train.json / dev.json (or val.json) / test.json, or "
                         "<split>/disambiguation/<file>.json", path=str(root))
    if "dev" not in splits and "train" in splits:
        train_all = splits["train"]
        splits["dev"] = [m for m in train_all if stable_fraction(m.id, DEV_SALT) < DEV_FRACTION]
        dev_ids = {m.id for m in splits["dev"]}
        splits["train"] = [m for m in train_all if m.id not in dev_ids]
        source = extras["train"]["source"]
        extras["dev"] = {"source": f"{source} ({DEV_FRACTION:.0%} by stable hash of the review id)"}
    for split in [s for s in SPLIT_FILES if s in splits]:
        mentions = splits[split]
        stats["splits"][split] = split_stats(mentions, kb, records=len(mentions), records_missing=0,
                                             review_images=sum(len(images[m.id]) for m in mentions), **extras[split])
    stats["mentions"] = sum(len(v) for v in splits.values())
    stats["gold_not_in_kb"] = sum(s["gold_not_in_kb"] for s in stats["splits"].values())
    stats["gold_none"] = sum(s["gold_none"] for s in stats["splits"].values())
    ordered = {s: splits[s] for s in SPLIT_FILES if s in splits}
    return AmeliDataset(name=NAME, kb=kb, splits=ordered, stats=stats, root=str(root), mention_images=images)
