"""CompiledEncoder's gradient hook (any objective function of the outputs, one graph per function, reused for every
length), the objectives of ``analysis.objectives`` on a tiny random model, and the CPU line every benchmark table
prints (``bench.common``)."""

import numpy as np
import pytest

from analysis.objectives import OBJECTIVES
from bench.common import ISA_CAPS, capped_environment, cpu_description
from encoder.compiled import CompiledEncoder
from encoder.model import TransformerEncoder
from tests.support.models import tiny_config

EPS = np.finfo(np.float32).eps


@pytest.fixture(scope="module")
def tiny():
    """(CompiledEncoder, config) of a random mean-pooled classifier, 2 layers x 2 heads, d = 8."""
    import keras

    keras.utils.set_random_seed(0)
    config = tiny_config(num_classes=3)
    return CompiledEncoder(TransformerEncoder(config)), config


def _inputs(config, rows: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (rows, length)).astype(np.int32)
    noise = np.zeros((rows, length, config.d_model), np.float32)
    direction = rng.standard_normal((rows, config.d_model)).astype(np.float32)
    return ids, np.zeros_like(ids), noise, np.array([2] * rows, np.int32), direction


def first_hidden_number(ops, model, outputs, target, direction):
    """(B,): the first number of every row's last hidden state, a function of the outputs the hook knows nothing of."""
    return outputs["hidden"][:, -1, 0, 0]


def test_any_objective_function_is_differentiated_once_per_function(tiny):
    encoder, config = tiny
    ids, segments, noise, target, direction = _inputs(config, 2, 5)
    f, gradient = encoder.input_gradients(first_hidden_number, ids, segments, noise, target, direction)
    outputs = encoder.forward(ids, segments)
    np.testing.assert_allclose(f.numpy(), outputs["hidden"].numpy()[:, -1, 0, 0], rtol=0, atol=8 * EPS)
    assert gradient.shape == (2, 5, config.d_model) and np.abs(gradient.numpy()).max() > 0
    traced = encoder.tracing_count()
    encoder.input_gradients(first_hidden_number, *_inputs(config, 3, 9, seed=1))  # a new batch and length
    assert encoder.tracing_count() == traced
    encoder.input_gradients(OBJECTIVES["cosine"], ids, segments, noise, target, direction)
    assert encoder.tracing_count() == traced + 1  # another function: its own graph


def test_the_objectives_are_the_probability_and_the_pooled_vectors_projection_and_cosine(tiny):
    encoder, config = tiny
    ids, segments, noise, target, direction = _inputs(config, 2, 6)
    outputs = {k: v.numpy().astype(np.float64) for k, v in encoder.forward(ids, segments).items()}
    pooled = outputs["hidden"][:, -1].mean(axis=1)  # mean pooling, before any normalisation
    expected = {
        "probability": outputs["probabilities"][:, 2],
        "projection": (pooled * direction).sum(axis=-1),
        "cosine": (pooled * direction).sum(axis=-1) / (np.linalg.norm(pooled, axis=-1)
                                                       * np.linalg.norm(direction, axis=-1)),
    }
    for name, value in expected.items():
        f, _, scale = encoder.attention_gradients(OBJECTIVES[name], ids, segments, noise,
                                                  np.ones((2, 2, 2, 6, 6), np.float32), target, direction)
        np.testing.assert_allclose(f.numpy(), value, rtol=32 * EPS, atol=32 * EPS, err_msg=name)
        assert scale.shape == (2, 2, 2, 6, 6)


def test_an_objective_must_be_a_function(tiny):
    encoder, config = tiny
    with pytest.raises(TypeError, match="function of the model's outputs"):
        encoder.input_gradients("probability", *_inputs(config, 1, 4))


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16
processor\t: 1
model name\t: AMD EPYC 7B13
"""


def test_every_table_names_the_cpu_and_its_vector_extensions(monkeypatch):
    for key in ISA_CAPS["avx2"]:
        monkeypatch.delenv(key, raising=False)
    text = cpu_description(CPUINFO)
    assert text.startswith("AMD EPYC 7B13 (") and text.endswith("SSE4.2 AVX AVX2 FMA AVX-512F/BW/VL/VNNI/BF16")
    assert "capped" not in text
    assert cpu_description("model name : Old CPU\nflags : fpu sse2 avx\n").endswith("AVX")


def test_the_capped_run_says_it_is_capped(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX512")
    capped = capped_environment("avx2")
    assert capped["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX2"  # other flags kept
    assert capped["ONEDNN_MAX_CPU_ISA"] == "AVX2" and capped["ATEN_CPU_CAPABILITY"] == "avx2"
    for key, value in capped.items():
        monkeypatch.setenv(key, value)
    assert "capped to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2" in cpu_description(CPUINFO)
