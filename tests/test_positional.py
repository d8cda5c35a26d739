import math

import numpy as np
import pytest

from encoder.model import TransformerEncoder
from encoder.positional import sinusoidal_encoding
from tests.support.models import tiny_config


def test_sinusoidal_table_equals_the_formula_entry_by_entry():
    length, depth = 50, 16
    table = sinusoidal_encoding(length, depth)
    assert table.shape == (length, depth) and table.dtype == np.float32
    for pos in range(length):
        for i in range(depth // 2):
            angle = pos / 10000 ** (2 * i / depth)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_first_row_alternates_zero_one_and_values_are_bounded():
    table = sinusoidal_encoding(512, 128)
    np.testing.assert_array_equal(table[0], np.tile([0.0, 1.0], 64))
    assert np.abs(table).max() <= 1.0


def test_sinusoidal_rejects_empty_shapes():
    with pytest.raises(ValueError, match="length"):
        sinusoidal_encoding(0, 8)


def test_classic_model_adds_exactly_the_sinusoidal_table():
    config = tiny_config(positional="sinusoidal", scale_embeddings=True)
    model = TransformerEncoder(config)
    np.testing.assert_array_equal(model.positional_table(), sinusoidal_encoding(32, 8))
    ids = np.array([[3, 5, 7, 9]], dtype=np.int32)
    out = model(ids)
    embedded = model.token_embedding.embeddings.numpy()[ids[0]] * math.sqrt(8) + sinusoidal_encoding(4, 8)
    np.testing.assert_allclose(out["hidden"].numpy()[0, 0], embedded, atol=1e-6)
