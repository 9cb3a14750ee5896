"""``unimel``: UniMEL's linking chain on the shared steps: retrieval -> cross-encoder re-ranking -> an LLM,
LoRA-tuned as a multiple-choice selector (``mel train selector``), picks among the re-ranked head -> NIL.

Its score is the selector's fusion ``(1 - w) * re-ranked + w * P(option)`` (``selection.fusion_weight``, tuned on
dev): both parts lie in [0, 1], so ``nil.threshold`` applies to a probability-like score. The adapter used when a
request names none is ``methods.unimel.adapter`` (a name in ``selection.adapters``), else
``selection.lora_adapter``; ``configs/unimel.yaml`` turns re-ranking on.

UniMEL's augmentation: entity summaries are embedded by the index (`mel augment entities`, `mel index --summaries`);
the ``describe`` step (off unless ``augment.mentions.enabled``) asks the LLM what the mention refers to and shows
the answer in the mention's context to retrieval/re-ranking and/or the selector.
"""

from pydantic import BaseModel, ConfigDict, Field

from mel.methods.registry import register_method
from mel.methods.spec import MethodSpec


class UnimelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str | None = Field(None, description="Name (in selection.adapters) of the trained selector adapter "
                                "used when a request names none; None: selection.lora_adapter.")


register_method(MethodSpec(
    "unimel", ("describe", "retrieve", "rerank", "select", "nil"),
    "UniMEL: (an LLM describes the mention,) retrieval, cross-encoder re-ranking, then the LoRA-tuned LLM picks one "
    "candidate (multiple choice)",
    UnimelSettings,
    score="(1 - w) x the re-ranked score + w x the LoRA selector probability of the chosen option, both in [0, 1]"))
