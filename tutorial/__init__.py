"""The project's own model: the classic Keras encoder of the tutorial, trained here for sentiment.

``dataset`` builds the VADER sentence split (``make data``), ``train`` trains the classifier and writes
``models/tutorial/`` (``make train``), ``baselines`` scores the majority class and a bag-of-words model on the same
split, ``predict`` labels many texts at once. Nothing in ``encoder/`` imports this package: the model core never
depends on training or data preparation.
"""

import encoder  # noqa: F401  (sets KERAS_BACKEND before train.py imports Keras)
