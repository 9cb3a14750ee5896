"""A generated AMELI-format sample of confusable product families, for tests, the demo of attribute filtering and
``bench/bench_ameli_sample.py``.

Each family is one product line sold in variants that differ by **one** attribute (colour, storage, screen size,
processor): same brand, same description, names that differ only by a model code, so nothing but that attribute
tells the variants apart. Every review of a variant names the variant's value of that attribute in its text
("Got the lunar white Charge 5 last week..."), and its mention is the line's name. A few reviews are about products
the KB does not hold (``gold_entity_info: null``: NIL). The sample is built so that attribute filtering matters;
text retrieval sees the attributes too (``index.entity_template`` embeds them), so it is not hopeless without it.

Written in the released format (``products.json`` with ``Spec`` sections; ``train.json``, ``dev.json``,
``test.json`` review arrays) and read back by :mod:`mel.datasets.ameli`; no images.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (brand, line, category, varying attribute, values, shared attributes)
FAMILIES: list[tuple[str, str, str, str, list[str], dict[str, str]]] = [
    ("Samsung", "Galaxy S21", "Cell Phones", "Color", ["Phantom Black", "Phantom White", "Phantom Violet"],
     {"Operating System": "Android", "Screen Size": "6.2 inches"}),
    ("Samsung", "Galaxy Buds Pro", "Headphones", "Color", ["Phantom Black", "Phantom Silver", "Phantom Violet"],
     {"Wireless Connectivity": "Bluetooth", "Noise Cancelling": "Yes"}),
    ("Apple", "iPad Air", "Tablets", "Storage Capacity", ["64 gigabytes", "256 gigabytes"],
     {"Operating System": "iPadOS", "Screen Size": "10.9 inches"}),
    ("Apple", "AirPods Max", "Headphones", "Color", ["Space Gray", "Silver", "Sky Blue", "Pink"],
     {"Wireless Connectivity": "Bluetooth", "Noise Cancelling": "Yes"}),
    ("LG", "OLED C1 TV", "TVs", "Screen Size", ["48 inches", "55 inches", "65 inches", "77 inches"],
     {"Display Type": "OLED", "Resolution": "4K (2160p)"}),
    ("Sony", "WH-1000XM4", "Headphones", "Color", ["Black", "Silver", "Midnight Blue"],
     {"Wireless Connectivity": "Bluetooth", "Noise Cancelling": "Yes"}),
    ("Dell", "XPS 13", "Laptops", "Processor Model", ["Intel Core i5", "Intel Core i7"],
     {"Screen Size": "13.4 inches", "Operating System": "Windows 11"}),
    ("Bose", "QuietComfort Earbuds", "Headphones", "Color", ["Triple Black", "Soapstone"],
     {"Wireless Connectivity": "Bluetooth", "Noise Cancelling": "Yes"}),
    ("Google", "Pixel 6", "Cell Phones", "Color", ["Stormy Black", "Sorta Seafoam", "Kinda Coral"],
     {"Operating System": "Android", "Screen Size": "6.4 inches"}),
    ("Microsoft", "Surface Pro 7", "Tablets", "Storage Capacity", ["128 gigabytes", "256 gigabytes", "512 gigabytes"],
     {"Operating System": "Windows 10", "Screen Size": "12.3 inches"}),
    ("Samsung", "Front Load Washer", "Washers", "Color", ["White", "Champagne", "Black Stainless Steel"],
     {"Capacity": "4.5 cubic feet", "Energy Star Certified": "Yes"}),
    ("Fitbit", "Charge 5", "Fitness Trackers", "Color", ["Black", "Lunar White", "Steel Blue"],
     {"Water Resistant": "Yes", "GPS": "Built-in"}),
]
TEMPLATES = [
    ("Love it", "I love my {line} in {value}. {filler}"),
    ("Great buy", "Got the {value} {line} last week and {filler_lc}"),
    ("Solid", "The {line} ({value}) is exactly what I wanted. {filler}"),
    ("Happy", "Picked the {value} version of the {line}. {filler}"),
]
FILLERS = ["Setup took five minutes.", "Battery life is better than expected.", "Would buy it again.",
           "It arrived a day early.", "Customer service was helpful.", "No complaints so far."]
NIL_REVIEWS = [("Vitamix blender", "Loud", "The Vitamix blender is loud but crushes ice."),
               ("Roomba", "Smart", "Our Roomba maps the whole house."),
               ("Kindle", "Easy reading", "The Kindle screen is easy on the eyes."),
               ("Nest thermostat", "Saves money", "The Nest thermostat lowered our bill.")]
SPLITS = {"train": 2, "dev": 1, "test": 2}


def _spec(**sections: dict[str, str]) -> list[dict]:
    return [{"subsection": name.replace("_", " "), "text": [{"specification": k, "value": v} for k, v in items.items()]}
            for name, items in sections.items()]


def build(seed: int = 0) -> tuple[list[dict], dict[str, list[dict]]]:
    """The product records and the review records per split (deterministic for a seed)."""
    rng = random.Random(seed)
    products: list[dict] = []
    reviews: dict[str, list[dict]] = {s: [] for s in SPLITS}
    rid = 1
    for f, (brand, line, category, key, values, shared) in enumerate(FAMILIES):
        for v, value in enumerate(values):
            pid = 1000 + 10 * f + v
            code = f"{brand[:2].upper()}-{rng.randint(1000, 9999)}{chr(65 + v)}"
            products.append({
                "id": pid, "product_name": f"{brand} - {line} - Model {code}", "product_category": category,
                "overview_section": {"description": f"The {brand} {line}, {category.lower()}."},
                "Spec": _spec(Key_Specs={"Brand": brand, key: value, **shared}, General={"Model Number": code}),
                "image_path": [], "url": f"https://example.invalid/{pid}",
            })
            for split, n in SPLITS.items():
                for _ in range(n):
                    header, body = rng.choice(TEMPLATES)
                    filler = rng.choice(FILLERS)
                    text = body.format(line=line, value=value.lower(), filler=filler,
                                       filler_lc=filler[0].lower() + filler[1:])
                    reviews[split].append({"review_id": rid, "mention": line, "header": header, "body": text,
                                           "review_image_path": [], "gold_entity_info": {"id": pid},
                                           "attribute": {}})
                    rid += 1
    for i, (mention, header, body) in enumerate(NIL_REVIEWS):
        split = "test" if i % 2 == 0 else "dev"
        reviews[split].append({"review_id": rid, "mention": mention, "header": header, "body": body,
                               "review_image_path": [], "gold_entity_info": None, "attribute": {}})
        rid += 1
    for split in reviews:
        rng.shuffle(reviews[split])
    return products, reviews


def write_ameli_families(root: str | Path, *, seed: int = 0) -> Path:
    """Write the sample under ``root/ameli`` (the folder :func:`mel.datasets.load_dataset` looks in for
    ``ameli``); returns that folder."""
    d = Path(root) / "ameli"
    d.mkdir(parents=True, exist_ok=True)
    products, reviews = build(seed)
    (d / "products.json").write_text(json.dumps(products, indent=1))
    for split, recs in reviews.items():
        (d / f"{split}.json").write_text(json.dumps(recs, indent=1))
    return d
