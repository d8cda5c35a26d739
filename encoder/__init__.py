"""The model core: text in, every layer's and head's attention out, as one ``EncoderTrace`` (plain NumPy).

Rules: nothing here imports ``viz/``, ``ui/``, Streamlit, training or data preparation; ``trace`` is the one place
tensors become NumPy, and ``trace_io`` the one place traces become files. Errors a user can cause are ours
(``errors``), with messages that say what to do.

Modules: ``config`` (EncoderConfig), ``positional`` (the sinusoidal table), ``layers`` (InstrumentedAttention,
EncoderLayer), ``model`` (TransformerEncoder, CompiledEncoder), ``tokenizer``, ``checkpoints`` (Hugging Face
import: pure config mapping + flat, shape-checked weight ports), ``saving`` (our folder format), ``sources``
(model names -> loaded models), ``trace``, ``trace_io``, ``errors``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the app
