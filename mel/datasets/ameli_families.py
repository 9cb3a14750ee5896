"""A generated AMELI-format sample of confusable product families, for tests, the demo of attribute filtering and
``bench/bench_ameli_sample.py``.

Each family is one product line sold in variants that differ by **one** attribute (colour, storage, screen size,
processor): same brand, same description, names that differ only by a model code, so nothing but that attribute
tells the variants apart. Every review of a variant names the variant's value of that attribute in its text
("Got the lunar white Charge 5 last week..."), and its mention is the line's name. A few reviews are about products
the KB does not hold (``gold_entity_info: null``: NIL). The sample is built so that attribute filtering matters;
text retrieval sees the attributes too (``index.entity_template`` embeds them), so it is not hopeless without it.

Written in the released format (``products.json`` with ``Spec`` sections; ``train.json``, ``dev.json``,
``test.json`` review arrays) and read back by :mod:`mel.datasets.ameli`. With ``images=True``, every product gets
two photos and most reviews one (32 x 32 PNGs): a product's photos have its colour (the colour word of its "Color"
value; the line's own colour for variants that differ by another attribute), a review photo its variant's colour,
all with seeded noise, so images tell colour variants apart and nothing else. ``unnamed_share`` of the reviews
that carry a photo name no attribute value in their text ("The Pixel 6 works well."): only the photo tells.
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
UNNAMED = ("Works well", "The {line} works well. {filler}")
FILLERS = ["Setup took five minutes.", "Battery life is better than expected.", "Would buy it again.",
           "It arrived a day early.", "Customer service was helpful.", "No complaints so far."]
NIL_REVIEWS = [("Vitamix blender", "Loud", "The Vitamix blender is loud but crushes ice."),
               ("Roomba", "Smart", "Our Roomba maps the whole house."),
               ("Kindle", "Easy reading", "The Kindle screen is easy on the eyes."),
               ("Nest thermostat", "Saves money", "The Nest thermostat lowered our bill.")]
SPLITS = {"train": 2, "dev": 1, "test": 2}
PALETTE = {"black": (24, 24, 28), "white": (236, 236, 232), "violet": (120, 60, 170), "silver": (190, 190, 198),
           "gray": (115, 115, 120), "blue": (40, 80, 175), "pink": (232, 150, 182), "seafoam": (120, 205, 180),
           "coral": (240, 118, 96), "champagne": (228, 206, 164), "soapstone": (214, 208, 196), "steel": (90, 110, 140)}
LINE_COLOURS = [(150, 40, 40), (40, 130, 60), (170, 140, 40), (60, 60, 140)]
REVIEW_PHOTO_SHARE = 0.8


def colour_of(value: str, line_index: int, key: str) -> tuple[int, int, int]:
    """A product's photo colour: the last palette word of its Color value, else its line's own colour."""
    if key == "Color":
        words = [w for w in value.lower().split() if w in PALETTE]
        if words:
            return PALETTE[words[-1]]
    return LINE_COLOURS[line_index % len(LINE_COLOURS)]


def write_png(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    """A 32 x 32 PNG of ``colour`` with seeded noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-14, 15, size=(32, 32, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px.astype(np.uint8), "RGB").save(path)


def _spec(**sections: dict[str, str]) -> list[dict]:
    return [{"subsection": name.replace("_", " "), "text": [{"specification": k, "value": v} for k, v in items.items()]}
            for name, items in sections.items()]


def build(seed: int = 0, images: bool = False, unnamed_share: float = 0.0
          ) -> tuple[list[dict], dict[str, list[dict]], dict[str, tuple]]:
    """The product records, the review records per split (deterministic for a seed) and, with ``images``, the
    colour of every image file (relative name -> RGB)."""
    rng = random.Random(seed)
    photo_rng = random.Random(seed + 1)  # its own stream: the text is the same with and without images
    colours: dict[str, tuple] = {}
    products: list[dict] = []
    reviews: dict[str, list[dict]] = {s: [] for s in SPLITS}
    rid = 1
    for f, (brand, line, category, key, values, shared) in enumerate(FAMILIES):
        for v, value in enumerate(values):
            pid = 1000 + 10 * f + v
            code = f"{brand[:2].upper()}-{rng.randint(1000, 9999)}{chr(65 + v)}"
            colour = colour_of(value, f, key)
            photos = [f"{pid}_{k}.png" for k in range(2)] if images else []
            colours.update({f"product_images/{p}": colour for p in photos})
            products.append({
                "id": pid, "product_name": f"{brand} - {line} - Model {code}", "product_category": category,
                "overview_section": {"description": f"The {brand} {line}, {category.lower()}."},
                "Spec": _spec(Key_Specs={"Brand": brand, key: value, **shared}, General={"Model Number": code}),
                "image_path": photos, "url": f"https://example.invalid/{pid}",
            })
            for split, n in SPLITS.items():
                for _ in range(n):
                    header, body = rng.choice(TEMPLATES)
                    filler = rng.choice(FILLERS)
                    photo = [f"r{rid}.png"] if images and photo_rng.random() < REVIEW_PHOTO_SHARE else []
                    if photo and photo_rng.random() < unnamed_share:
                        header, body = UNNAMED
                    text = body.format(line=line, value=value.lower(), filler=filler,
                                       filler_lc=filler[0].lower() + filler[1:])
                    colours.update({f"review_images/{p}": colour for p in photo})
                    reviews[split].append({"review_id": rid, "mention": line, "header": header, "body": text,
                                           "review_image_path": photo, "gold_entity_info": {"id": pid},
                                           "attribute": {}})
                    rid += 1
    for i, (mention, header, body) in enumerate(NIL_REVIEWS):
        split = "test" if i % 2 == 0 else "dev"
        reviews[split].append({"review_id": rid, "mention": mention, "header": header, "body": body,
                               "review_image_path": [], "gold_entity_info": None, "attribute": {}})
        rid += 1
    for split in reviews:
        rng.shuffle(reviews[split])
    return products, reviews, colours


def write_ameli_families(root: str | Path, *, seed: int = 0, images: bool = False, unnamed_share: float = 0.0
                         ) -> Path:
    """Write the sample under ``root/ameli`` (the folder :func:`mel.datasets.load_dataset` looks in for
    ``ameli``), with photos when ``images`` (``unnamed_share``: see the module docstring); returns that folder."""
    d = Path(root) / "ameli"
    d.mkdir(parents=True, exist_ok=True)
    products, reviews, colours = build(seed, images, unnamed_share)
    (d / "products.json").write_text(json.dumps(products, indent=1))
    for split, recs in reviews.items():
        (d / f"{split}.json").write_text(json.dumps(recs, indent=1))
    for i, (rel, colour) in enumerate(sorted(colours.items())):
        write_png(d / rel, colour, seed=seed * 100_003 + i)
    return d
