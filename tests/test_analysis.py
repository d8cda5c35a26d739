"""Analysis math with hand-computed answers: rollout, flow, report card, Jensen-Shannon, clustering, diffs."""

import collections
import json
import math

import numpy as np
import pytest

from analysis import (
    STATISTICS,
    attention_flow,
    attention_rollout,
    cluster_heads,
    corpus_head_report,
    diff_traces,
    entropy,
    head_distances,
    head_divergence,
    head_report,
    head_rows,
    layered_max_flow,
    matrix_rows,
    residual_attention,
    rows_to_csv,
    sentences_from_text,
    to_json,
    token_classes,
)
from analysis import (
    js_divergence as js,
)
from analysis.divergence import LN2
from tests.support.floats import approx_f32, assert_close_f32
from tests.support.traces import random_attention, synthetic_trace

# ---------------------------------------------------------------------------------------------------------------
# Rollout

# Two layers, two heads, two tokens. Layer 0: head 0 looks at token 0, head 1 at token 1 -> mean all 0.5.
# Layer 1: both heads look at token 1.
TWO_LAYERS = np.array([
    [[[1, 0], [1, 0]], [[0, 1], [0, 1]]],
    [[[0, 1], [0, 1]], [[0, 1], [0, 1]]],
], np.float32)


def test_rollout_of_two_layers_by_hand():
    # A'_0 = 0.5 * [[.5, .5], [.5, .5]] + 0.5 * I = [[.75, .25], [.25, .75]]
    # A'_1 = 0.5 * [[0, 1], [0, 1]] + 0.5 * I = [[.5, .5], [0, 1]]
    # rollout_1 = A'_1 @ A'_0 = [[.5*.75 + .5*.25, .5*.25 + .5*.75], [.25, .75]] = [[.5, .5], [.25, .75]]
    rollout = attention_rollout(TWO_LAYERS)
    assert rollout.shape == (2, 2, 2) and rollout.dtype == np.float64
    np.testing.assert_array_equal(rollout[0], [[0.75, 0.25], [0.25, 0.75]])
    np.testing.assert_array_equal(rollout[1], [[0.5, 0.5], [0.25, 0.75]])


def test_rollout_residual_weight_is_a_parameter():
    # Without the residual: A'_0 = [[.5, .5], [.5, .5]], A'_1 = [[0, 1], [0, 1]] -> rollout_1 = [[.5, .5], [.5, .5]]
    np.testing.assert_array_equal(attention_rollout(TWO_LAYERS, residual=0.0)[1], [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_array_equal(attention_rollout(TWO_LAYERS, residual=1.0)[1], np.eye(2))
    with pytest.raises(ValueError, match="between 0 and 1"):
        attention_rollout(TWO_LAYERS, residual=1.5)


def test_residual_attention_renormalises_rows():
    # Rows summing to 2: mean [[1, 1], [1, 1]] -> 0.5 * mean + 0.5 * I = [[1, .5], [.5, 1]] -> rows / 1.5
    doubled = np.ones((1, 1, 2, 2), np.float32)
    np.testing.assert_allclose(residual_attention(doubled)[0], [[2 / 3, 1 / 3], [1 / 3, 2 / 3]], rtol=1e-15)


def test_rollout_rows_sum_to_one_on_random_attention():
    rollout = attention_rollout(random_attention(np.random.default_rng(0), 4, 3, 9))
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-12)
    assert (rollout >= 0).all()


def test_rollout_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(layers, heads, T, T\)"):
        attention_rollout(np.ones((2, 3, 4)))


# ---------------------------------------------------------------------------------------------------------------
# Flow


def test_flow_of_one_layer_is_the_residual_attention():
    attention = random_attention(np.random.default_rng(1), 1, 2, 5)
    np.testing.assert_allclose(attention_flow(attention), residual_attention(attention)[0], atol=1e-12)


def test_flow_of_two_layers_by_hand():
    # Paths j -> m -> i through different middle tokens m are disjoint, so flow[i, j] = sum_m min(A'_0[m, j],
    # A'_1[i, m]) with A'_0 = [[.75, .25], [.25, .75]], A'_1 = [[.5, .5], [0, 1]] (as in the rollout example):
    # [0, 0] = min(.75, .5) + min(.25, .5) = .75    [0, 1] = min(.25, .5) + min(.75, .5) = .75
    # [1, 0] = min(.75, 0) + min(.25, 1) = .25      [1, 1] = min(.25, 0) + min(.75, 1) = .75
    np.testing.assert_allclose(attention_flow(TWO_LAYERS), [[0.75, 0.75], [0.25, 0.75]], atol=1e-12)


def test_flow_needs_a_backward_edge():
    # Inputs s0, s1; middle layers (a, b) and (c, d); outputs t0, t1. capacity[l][m, k] is edge (l, k) -> (l+1, m).
    # s0 -> a 1, s0 -> b 1; a -> c 1, a -> d 1, b -> c 1, b -/-> d; c -> t0 1, d -> t0 1.
    # s0 -> t0 is 2 only with both paths s0-a-d-t0 and s0-b-c-t0: after the first greedy path s0-a-c-t0 the
    # second one must undo a -> c. s0 -> t1 (c -> t1 .5, d -> t1 .25) is .75; from s1 (s1 -> a .5 only) .5 each.
    capacity = np.array([
        [[1.0, 0.5], [1.0, 0.0]],
        [[1.0, 1.0], [1.0, 0.0]],
        [[1.0, 1.0], [0.5, 0.25]],
    ])
    np.testing.assert_allclose(layered_max_flow(capacity), [[2.0, 0.5], [0.75, 0.5]], atol=1e-12)


def edmonds_karp(capacity: np.ndarray, source: int, sink: int) -> float:
    """A textbook max flow (BFS augmenting paths) on a dense capacity matrix, to check the layered solver."""
    residual = capacity.astype(np.float64).copy()
    total = 0.0
    while True:
        parent = {source: source}
        queue = collections.deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v in np.nonzero(residual[u] > 1e-13)[0]:
                if int(v) not in parent:
                    parent[int(v)] = u
                    queue.append(int(v))
        if sink not in parent:
            return total
        path, v = [], sink
        while v != source:
            path.append((parent[v], v))
            v = parent[v]
        bottleneck = min(residual[u, v] for u, v in path)
        for u, v in path:
            residual[u, v] -= bottleneck
            residual[v, u] += bottleneck
        total += bottleneck


def dense_graph(capacity: np.ndarray) -> np.ndarray:
    layers, t, _ = capacity.shape
    graph = np.zeros(((layers + 1) * t, (layers + 1) * t))
    for layer in range(layers):
        graph[layer * t:(layer + 1) * t, (layer + 1) * t:(layer + 2) * t] = capacity[layer].T
    return graph


@pytest.mark.parametrize(("layers", "tokens", "seed"), [(2, 4, 0), (3, 5, 1), (4, 6, 2), (6, 7, 3)])
def test_flow_equals_a_textbook_max_flow(layers, tokens, seed):
    attention = random_attention(np.random.default_rng(seed), layers, 2, tokens, sharpness=2.0)
    flow = attention_flow(attention)
    graph = dense_graph(residual_attention(attention))
    expected = np.array([[edmonds_karp(graph, j, layers * tokens + i) for j in range(tokens)] for i in range(tokens)])
    np.testing.assert_allclose(flow, expected, atol=1e-10)
    assert (flow <= 1 + 1e-12).all()  # each output position takes in at most 1


def test_flow_over_fewer_layers_and_limits():
    attention = random_attention(np.random.default_rng(4), 3, 2, 4)
    np.testing.assert_allclose(attention_flow(attention, num_layers=1), residual_attention(attention)[0], atol=1e-12)
    with pytest.raises(ValueError, match="between 1 and 3"):
        attention_flow(attention, num_layers=4)
    with pytest.raises(ValueError, match=r"limited to 32 tokens.*33 tokens"):
        attention_flow(np.full((1, 1, 33, 33), 1 / 33))


# ---------------------------------------------------------------------------------------------------------------
# Jensen-Shannon divergence


def test_js_by_hand_and_properties():
    p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    m = (p + q) / 2
    by_kl = 0.5 * (1.0 * math.log(1.0 / m[0])) + 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert js(p, q) == pytest.approx(by_kl, abs=1e-15)
    assert js(p, q) == pytest.approx(0.21576155433883565, abs=1e-15)
    assert js(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(LN2, abs=1e-15)
    rng = np.random.default_rng(5)
    a, b = rng.dirichlet(np.ones(7), 200), rng.dirichlet(np.full(7, 0.2), 200)
    a[:, 0] = 0
    a /= a.sum(1, keepdims=True)
    np.testing.assert_array_equal(js(a, b), js(b, a))
    assert (js(a, a) == 0).all()
    assert (js(a, b) > 0).all() and (js(a, b) <= LN2).all()


def test_entropy_in_nats():
    assert entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert entropy(np.array([1.0, 0.0, 0.0])) == 0.0


def test_head_distances_and_divergence_agree():
    attention = random_attention(np.random.default_rng(6), 2, 3, 5)
    distance = head_distances(attention)
    assert distance.shape == (6, 6)
    np.testing.assert_array_equal(np.diag(distance), 0.0)
    np.testing.assert_array_equal(distance, distance.T)
    expected = js(attention[0, 1], attention[1, 2]).mean()  # float64 throughout
    assert distance[1, 5] == approx_f32(expected, ulps=16)  # float32 logarithms
    other = random_attention(np.random.default_rng(7), 2, 3, 5)
    divergence = head_divergence(attention, other)
    assert_close_f32(divergence, js(attention, other).mean(-1), ulps=16)
    other[1, 2] = attention[1, 2]
    divergence = head_divergence(attention, other)
    assert divergence[1, 2] == 0.0 and (np.delete(divergence.ravel(), 5) > 0).all()
    copies = np.concatenate([attention, attention], axis=1)
    assert head_distances(copies)[0, 3] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Report card

TOKENS = ("[CLS]", "hi", ".", "[SEP]")
UNIFORM = np.full((4, 4), 0.25)
PREVIOUS = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], float)  # row 0 has no previous
TO_SEP = np.tile([0.0, 0.0, 0.0, 1.0], (4, 1))
EXPECTED = {  # worked out by hand from the definitions in head_report's docstring
    "entropy": (math.log(4), 0.0, 0.0),
    "cls": (0.25, 0.5, 0.0),  # PREVIOUS: rows 0 and 1 put everything on [CLS]
    "sep": (0.25, 0.0, 1.0),
    "punctuation": (0.25, 0.25, 0.0),  # PREVIOUS: row 3 looks at "."
    "self": (0.25, 0.25, 0.25),  # PREVIOUS: row 0; TO_SEP: row 3
    "previous": (0.25, 1.0, 0.0),  # over the 3 queries that have a previous token
    "next": (0.25, 0.0, 1 / 3),  # TO_SEP: row 2 looks at token 3
    "distance": (1.25, 0.75, 1.5),  # UNIFORM: (1.5 + 1 + 1 + 1.5) / 4; TO_SEP: (3 + 2 + 1 + 0) / 4
}


def test_report_card_statistics_by_hand():
    trace = synthetic_trace(TOKENS, attention=np.stack([UNIFORM, PREVIOUS, TO_SEP])[None])
    report = head_report(trace)
    assert set(report.statistics) == set(STATISTICS)
    assert report.num_texts == 1 and report.num_queries == 4 and report.distance is None
    for name, values in EXPECTED.items():
        assert_close_f32(report[name][0], values, ulps=8, err_msg=name)  # float32 logarithms
    rows = report.rows()
    assert len(rows) == 3 and rows[1]["layer"] == 0 and rows[1]["head"] == 1
    assert rows[1]["previous"] == approx_f32(1.0)
    with pytest.raises(KeyError, match="unknown statistic"):
        report["beauty"]


def test_token_classes():
    tokens = ("[CLS]", "a", "##.", "'", "--", "$", "x.", "[SEP]", "b", "[SEP]")
    classes = token_classes(tokens, np.array([t.startswith("[") for t in tokens]))
    assert classes["cls"].tolist() == [True] + [False] * 9
    assert np.nonzero(classes["sep"])[0].tolist() == [7, 9]
    assert np.nonzero(classes["punctuation"])[0].tolist() == [2, 3, 4]


def test_corpus_report_is_token_weighted():
    three = ("[CLS]", "hi", "[SEP]")
    short = synthetic_trace(three, attention=np.stack([np.full((3, 3), 1 / 3), np.eye(3)])[None])
    long = synthetic_trace(TOKENS, attention=np.stack([UNIFORM, PREVIOUS])[None])
    calls = []
    report = corpus_head_report([short, long], total=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert report.num_texts == 2 and report.num_queries == 7
    # entropy: (3 * ln 3 + 4 * ln 4) / 7 for head 0; self: (3 * 1/3 + 4 * .25) / 7 for head 0.
    assert report["entropy"][0, 0] == approx_f32((3 * math.log(3) + 4 * math.log(4)) / 7, ulps=8)
    assert report["self"][0, 0] == approx_f32((1 + 1) / 7)
    # previous is averaged over queries that have one: 2 + 3; head 1: eye (0) then PREVIOUS (3 x 1).
    assert report["previous"][0, 1] == approx_f32(3 / 5)
    one = head_report(short, distances=True).distance
    two = head_report(long, distances=True).distance
    np.testing.assert_allclose(report.distance, (3 * one + 4 * two) / 7)


def test_corpus_report_errors():
    with pytest.raises(ValueError, match="empty"):
        corpus_head_report([])
    a = synthetic_trace(("[CLS]", "a", "[SEP]"), attention=np.full((1, 1, 3, 3), 1 / 3))
    b = synthetic_trace(("[CLS]", "a", "[SEP]"), attention=np.full((2, 1, 3, 3), 1 / 3))
    with pytest.raises(ValueError, match="one model: 1x1 heads, then 2x1"):
        corpus_head_report([a, b])


def test_sentences_from_text():
    assert sentences_from_text("one\n\n  two  \r\nthree\n") == ["one", "two", "three"]
    assert sentences_from_text("a\nb\nc", limit=2) == ["a", "b"]
    assert sentences_from_text("a\n\nb\nc\nd", limit=2).dropped == 2  # it says when it cut (blank lines aside)
    assert sentences_from_text("a\nb", limit=2).dropped == 0
    with pytest.raises(ValueError, match="no sentences"):
        sentences_from_text(" \n\n")


# ---------------------------------------------------------------------------------------------------------------
# Clustering


def test_average_linkage_by_hand():
    # d01 = 1, d02 = 4, d12 = 6: merge {0, 1} at 1, then {0, 1} with 2 at the mean (4 + 6) / 2 = 5.
    distance = np.array([[0, 1, 4], [1, 0, 6], [4, 6, 0]], float)
    result = cluster_heads(distance, 1, 3)
    np.testing.assert_array_equal(result.merges, [[0, 1, 1, 2], [2, 3, 5, 3]])
    assert result.order.tolist() == [2, 0, 1]  # lower cluster id first: leaf 2, then cluster {0, 1}
    assert result.labels() == ["L0 H0", "L0 H1", "L0 H2"]


def test_clustering_finds_two_groups_and_cuts():
    distance = np.full((4, 4), 10.0)
    distance[0, 2] = distance[2, 0] = 1.0
    distance[1, 3] = distance[3, 1] = 2.0
    np.fill_diagonal(distance, 0)
    result = cluster_heads(distance, 2, 2)
    np.testing.assert_array_equal(result.merges, [[0, 2, 1, 2], [1, 3, 2, 2], [4, 5, 10, 4]])
    assert result.order.tolist() == [0, 2, 1, 3]
    labels = result.clusters(2)
    assert labels[0] == labels[2] != labels[1] == labels[3]
    assert [row["cluster"] for row in result.rows(2)] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="between 1 and 4"):
        result.clusters(5)
    with pytest.raises(ValueError, match=r"2x3 heads need \(6, 6\)"):
        cluster_heads(distance, 2, 3)


def test_clustering_of_real_heads_puts_copies_together():
    rng = np.random.default_rng(8)
    base = random_attention(rng, 1, 3, 6)
    attention = np.concatenate([base, base], axis=1)  # heads 3, 4, 5 copy heads 0, 1, 2
    result = cluster_heads(head_distances(attention), 1, 6)
    for first in range(3):
        assert result.merges[first, 2] == 0.0
    pairs = {tuple(sorted(map(int, row[:2]))) for row in result.merges[:3]}
    assert pairs == {(0, 3), (1, 4), (2, 5)}


# ---------------------------------------------------------------------------------------------------------------
# Diff


def test_diff_ranks_changed_heads():
    rng = np.random.default_rng(9)
    a = random_attention(rng, 2, 3, 5)
    b = a.copy()
    b[1, 2] = random_attention(rng, 1, 1, 5)[0, 0]
    b[0, 1] = 0.5 * a[0, 1] + 0.5 * b[1, 2]
    tokens = ("[CLS]", "a", "b", "c", "[SEP]")
    diff = diff_traces(synthetic_trace(tokens, attention=a, model="m1"),
                       synthetic_trace(tokens, attention=b, model="m2"))
    assert diff.label_a == "m1" and diff.label_b == "m2"
    np.testing.assert_array_equal(diff.difference, b - a)
    assert diff.ranking()[:2].tolist() == [[1, 2], [0, 1]]
    assert diff.divergence[0, 0] == 0.0 and diff.divergence[1, 2] > diff.divergence[0, 1] > 0
    rows = diff.rows()
    assert rows[0]["rank"] == 1 and (rows[0]["layer"], rows[0]["head"]) == (1, 2)


def test_diff_errors_name_both_counts():
    a = synthetic_trace(("[CLS]", "a", "[SEP]"), attention=np.full((1, 1, 3, 3), 1 / 3), text="x")
    b = synthetic_trace(("[CLS]", "a", "b", "[SEP]"), attention=np.full((1, 1, 4, 4), 1 / 4), text="y")
    with pytest.raises(ValueError, match=r"3 tokens, the second 4.*minimal pair"):
        diff_traces(a, b)
    c = synthetic_trace(("[CLS]", "a", "c", "[SEP]"), attention=np.full((1, 1, 4, 4), 1 / 4), text="y")
    with pytest.raises(ValueError, match="share a tokenizer"):
        diff_traces(b, c)
    d = synthetic_trace(("[CLS]", "a", "c", "[SEP]"), attention=np.full((2, 1, 4, 4), 1 / 4), text="z")
    with pytest.raises(ValueError, match="1x1 and 2x1"):
        diff_traces(c, d)


# ---------------------------------------------------------------------------------------------------------------
# Export


def test_rows_csv_escapes_text_a_spreadsheet_would_run_and_keeps_numbers():
    """OWASP's CSV-injection rule, shared with the trace CSV (``encoder.trace_io.spreadsheet_safe``): a text cell
    starting with = + - @, tab or CR gets a leading "'"; numbers (also negative ones) are written as numbers."""
    import csv
    import io

    tokens = ("=HYPERLINK(\"http://x\")", "+1", "-", "@sum", "\tx", "\rx", "'=x", "cat")
    rows = [{"query_token": token, "value": -0.5} for token in tokens]
    read = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert [row["query_token"] for row in read] == ["'" + token for token in tokens[:-1]] + ["cat"]
    assert {row["value"] for row in read} == {"-0.5"}


def test_rows_csv_and_json():
    rollout = attention_rollout(TWO_LAYERS)
    rows = matrix_rows(rollout, ("a", "b"), "rollout")
    assert len(rows) == 8 and rows[-1] == {
        "layer": 1, "query_index": 1, "query_token": "b", "key_index": 1, "key_token": "b", "rollout": 0.75}
    text = rows_to_csv(rows)
    assert text.splitlines()[0] == "layer,query_index,query_token,key_index,key_token,rollout"
    assert text.splitlines()[-1] == "1,1,b,1,b,0.75"
    assert head_rows(np.array([[1.0, 2.0]]), "x") == [
        {"layer": 0, "head": 0, "x": 1.0}, {"layer": 0, "head": 1, "x": 2.0}]
    report = head_report(synthetic_trace(TOKENS, attention=np.stack([UNIFORM, PREVIOUS])[None]))
    data = json.loads(to_json(report))
    assert data["kind"] == "HeadReport" and data["statistics"]["previous"] == [[0.25, 1.0]]
    assert rows_to_csv(report.rows()).splitlines()[0] == "layer,head," + ",".join(STATISTICS)
    with pytest.raises(ValueError, match="no rows"):
        rows_to_csv([])
    tokens = ("[CLS]", "a", "[SEP]")
    diff = diff_traces(synthetic_trace(tokens, attention=np.full((1, 1, 3, 3), 1 / 3)),
                       synthetic_trace(tokens, attention=np.eye(3)[None, None]))
    summary = json.loads(to_json(diff))
    assert "difference" not in summary and summary["divergence"] == diff.divergence.tolist()
    assert np.array_equal(json.loads(to_json(diff, include_large=True))["difference"], diff.difference)


def test_without_a_special_first_token_the_cls_statistic_is_attention_to_the_first_token():
    tokens = ("The", "cat", "sat")  # GPT-2: no [CLS]
    attention = np.stack([np.tri(3) / np.tri(3).sum(-1, keepdims=True), np.eye(3)])[None]
    report = head_report(synthetic_trace(tokens, attention=attention, visible="causal", layers=1, heads=2))
    assert not report.first_special and report.describe("cls") == "attention to the first token"
    np.testing.assert_allclose(report["cls"][0], [(1 + 0.5 + 1 / 3) / 3, 1 / 3])
    assert report["sep"].tolist() == [[0.0, 0.0]]
    row = report.rows()[0]
    assert "first_token" in row and "cls" not in row
    assert head_report(synthetic_trace(TOKENS)).first_special
    assert "cls" in head_report(synthetic_trace(TOKENS)).rows()[0]
    assert not corpus_head_report([synthetic_trace(TOKENS), synthetic_trace(tokens)], distances=False).first_special
