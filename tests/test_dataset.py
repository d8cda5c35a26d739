"""The committed sentiment data: documented counts, no overlap between splits, and the rules that made it."""

import re
from collections import Counter

import pytest

from tutorial.dataset import (
    DATA_DIR,
    LABELS,
    SOURCES,
    SPLIT_NAMES,
    DataError,
    Example,
    RatedSentence,
    count_table,
    file_sha256,
    load_splits,
    parse_ground_truth,
    read_labelled_file,
    read_split,
    select_sentences,
    split_labelled,
    stratified_split,
    write_split,
)


@pytest.fixture(scope="module")
def splits():
    return load_splits()


def _readme_counts() -> dict[tuple[str, str], dict[str, int]]:
    rows = {}
    for line in (DATA_DIR / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\| (\w+) \| (negative|positive) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", line)
        if match:
            source, label, *numbers = match.groups()
            counts = dict(zip(SPLIT_NAMES, map(int, numbers[:3])))
            assert sum(counts.values()) == int(numbers[3])
            rows[(source, label)] = counts
    return rows


def test_files_have_the_documented_counts(splits):
    documented = _readme_counts()
    assert set(documented) == {(s, lab) for s in SOURCES for lab in LABELS}
    assert {(s, lab): c for s, lab, c in count_table(splits)} == documented
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    for name in SPLIT_NAMES:
        digest = file_sha256(DATA_DIR / f"{name}.tsv")
        assert f"`{name}.tsv`: {len(splits[name])} sentences, sha256 `{digest}`" in readme


def test_split_is_80_10_10_within_every_source_and_label(splits):
    for _source, _label, counts in count_table(splits):
        total = sum(counts.values())
        assert counts["validation"] == counts["test"] == round(total * 0.1)
        assert counts["train"] == total - 2 * round(total * 0.1)


def test_no_sentence_is_in_two_splits_or_twice_in_one(splits):
    keys = {name: Counter(" ".join(e.text.lower().split()) for e in part) for name, part in splits.items()}
    for name, counter in keys.items():
        assert counter.most_common(1)[0][1] == 1, name
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["validation"]) & set(keys["test"])


def test_labels_sources_and_text_are_clean(splits):
    for part in splits.values():
        for example in part:
            assert example.label in LABELS and example.source in SOURCES
            assert example.text == " ".join(example.text.split()) and "&amp;" not in example.text


def test_parse_ground_truth_reads_crlf_unescapes_and_names_bad_lines():
    rows = parse_ground_truth(b"1\t2.5\tGreat &amp;amp; fun\r\n2\t-0.2\t  meh \r\n\r\n", "tweets")
    assert rows == [RatedSentence("tweets", "1", 2.5, "Great & fun"), RatedSentence("tweets", "2", -0.2, "meh")]
    with pytest.raises(DataError, match="tweets line 2: expected id, rating and sentence"):
        parse_ground_truth(b"1\t2.5\tok\r\n2\tno tabs here\r\n", "tweets")
    with pytest.raises(DataError, match="rating 'high' is not a number"):
        parse_ground_truth(b"1\thigh\tok\r\n", "tweets")


def test_select_drops_near_zero_ratings_and_repeats_keeping_the_first():
    rows = [RatedSentence("a", "1", 0.49, "Close to neutral"), RatedSentence("a", "2", -0.5, "Bad  film"),
            RatedSentence("b", "3", 3.0, "bad film"), RatedSentence("b", "4", 1.0, "Good")]
    assert [r.id for r in select_sentences(rows)] == ["2", "4"]


def test_stratified_split_is_deterministic_and_independent_of_input_order():
    items = [(f"g{i % 3}", str(i)) for i in range(300)]
    first = stratified_split(items, group=lambda x: x[0], identity=lambda x: x[1])
    second = stratified_split(items[::-1], group=lambda x: x[0], identity=lambda x: x[1])
    for name in SPLIT_NAMES:
        assert sorted(first[name]) == sorted(second[name])
    assert [len(first[n]) for n in SPLIT_NAMES] == [240, 30, 30]
    assert Counter(g for g, _ in first["test"]) == {"g0": 10, "g1": 10, "g2": 10}


def test_split_file_round_trip_and_header_check(tmp_path):
    examples = [Example("positive", "tweets", "I love it :)"), Example("negative", "custom", "nope")]
    assert read_split(write_split(tmp_path / "x.tsv", examples)) == examples
    (tmp_path / "bad.tsv").write_text("text\tlabel\nhi\tpositive\n", encoding="utf-8")
    with pytest.raises(DataError, match="does not start with the header"):
        read_split(tmp_path / "bad.tsv")


def test_user_file_with_any_labels(tmp_path):
    path = tmp_path / "mine.tsv"
    lines = [f"{'spam' if i % 4 == 0 else 'ham'}\tmessage number {i}" for i in range(40)]
    path.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n", encoding="utf-8")
    examples = read_labelled_file(path)
    assert len(examples) == 40 and Counter(e.label for e in examples) == {"ham": 30, "spam": 10}
    parts = split_labelled(examples)
    assert [len(parts[n]) for n in SPLIT_NAMES] == [32, 4, 4]
    assert Counter(e.label for e in parts["test"]) == {"ham": 3, "spam": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [("positive no tab here\n", "line 1: expected 'label<TAB>text'"),
     ("positive\tgood\n\tno label\n", "line 2: expected 'label<TAB>text'"),
     ("positive\tgood\npositive\tfine\n", "at least two labels, found \\['positive'\\]")],
)
def test_user_file_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_labelled_file(path)
