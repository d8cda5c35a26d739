"""The model core: text in, every layer's and head's attention out, as one ``EncoderTrace`` (plain NumPy).

Rules: nothing here imports ``viz/``, ``ui/``, Streamlit, training or data preparation; ``trace`` is the one place
tensors become NumPy, and ``trace_io`` the one place traces become files. Errors a user can cause are ours
(``errors``), with messages that say what to do.

Layout (lower modules never import higher ones):

- ``config/``: ``EncoderConfig`` (``__init__``), grouped by part (``groups``: ``Embeddings``, ``Attention``, the
  position schemes, ``Block``, ``Head``); ``flat``: the flat names of the first saved models, accepted and read.
- ``positional``: NumPy position math (sinusoidal table, T5/MPNet and DeBERTa buckets, rotary frequencies, windows).
- ``parts/``: what a model is built from: ``norms``, ``mlp``, ``attention`` (``InstrumentedAttention`` and its
  logit rules), ``positions`` (the position-scheme interface: absolute table, relative bias buckets, rotary),
  ``disentangled`` (DeBERTa's attention and relative table), ``schemes`` (the part of each scheme kind).
- ``block``: the residual block (``EncoderLayer``): norm placement, attention, MLP.
- ``model``: ``TransformerEncoder``, assembling the parts the config names; ``compiled``: its ``tf.function`` runs.
- ``families/``: Hugging Face import per family, a pure ``convert_config`` and flat ``weight_ports``;
  ``checkpoints`` reads a folder through them; ``limits`` bounds what a folder may ask for.
- ``saving`` (our folder format), ``tokenizer``, ``pieces``, ``sources`` (model names -> loaded models), ``trace``,
  ``trace_io``, ``probes`` (one layer run alone), ``settings``, ``errors``; ``generate`` (a decoder continues a
  prompt through a key/value cache; the trace of prompt + continuation).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the app
