"""UniMEL's augmentation: LLM summaries of entities (``entity``), cached as content-addressed artifacts (``store``)
so that reruns generate only what changed.

Importing this package is light: vLLM loads when an engine is built. The Ray Data job is ``pipelines/augment.py``.
"""

from __future__ import annotations
