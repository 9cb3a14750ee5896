"""AMELI (Yao et al., EACL 2024): attribute-aware entity linking, on the shared steps.

- :mod:`mel.ameli.statements`: a candidate's attributes rendered as hypotheses ("Colour of Galaxy S21 is black.")
  and the aggregation of their scores;
- :mod:`mel.ameli.entail`: the scorers of (context, hypothesis) pairs: a Hugging Face NLI checkpoint, or the
  re-ranking cross-encoder as a relevance proxy, behind one small interface, with an in-memory cache;
- :mod:`mel.ameli.attributes`: attribute values the mention names, and the filter dropping contradicting candidates;
- :mod:`mel.ameli.fusion`: the fusion of the incoming score with the text (and image) streams.

The steps are ``entail``, ``attribute_filter`` and ``fuse`` (``mel/steps``); the methods ``ameli``,
``ameli-no-nli`` and ``ameli-no-filter`` (``mel/methods/ameli.py``). Importing this package is light.
"""
