"""GEMEL (Shi et al., "Generative Multimodal Entity Linking"): the parts of the method that exist so far.

- ``trie``: prefix trie over the token ids of every KB name and alias, the name -> entity ids map (collisions
  kept), stored beside the index with how it was made;
- ``lm``: the frozen causal LM behind a small protocol (Hugging Face transformers implementation: prompt
  [+ prefix embeddings] then one token per beam, reusing the key/value cache);
- ``decode``: beam search constrained by the trie (every finished beam is a complete KB name);
- ``demos``: in-context demonstrations retrieved from labelled mentions;
- ``prompt``: the prompt's token ids (header, demonstrations, query).

Not yet: the registered ``gemel`` method and its steps, the vLLM path of constrained generation, the stored
demonstration index and the image mapper (issue 15). Importing this package is light: torch and transformers
load inside the functions that need them.
"""
