"""The parts a model is assembled from, one module per concern: ``norms`` (the norm layer of a config's kind),
``mlp`` (dense or gated MLP, activations), ``attention`` (``InstrumentedAttention`` and the logit-rule interface),
``positions`` (the position-scheme interface; absolute tables, relative bias buckets, rotary), ``disentangled``
(DeBERTa's attention and relative table) and ``schemes`` (the part of each scheme kind)."""
