"""The tutorial model's data: VADER's human-rated sentences (Hutto & Gilbert, 2014), labelled by sign and split.

``python -m tutorial.dataset`` (``make data``) fetches the source distribution of ``vaderSentiment==3.3.2`` with
pip, reads the four ground-truth files inside it (movie reviews, tweets, NYT editorials, Amazon reviews: id, mean
human rating from -4 to +4, sentence), labels each sentence by the sign of its rating, drops near-zero ratings and
duplicates, and writes a deterministic train/validation/test split as TSV (label, source, text) with a README.

Example:
    >>> splits = load_splits()  # doctest: +SKIP
    >>> splits["train"][0]  # doctest: +SKIP
    Example(label='positive', source='movie_reviews', text='...')
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from encoder.errors import HeadlightError

PACKAGE = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
LICENCE_FILE = "vaderSentiment-3.3.2/LICENSE.txt"
# Source name -> ground-truth file inside hutto_ICWSM_2014/ (tab-separated id, mean rating, sentence; CRLF).
SOURCES = {
    "movie_reviews": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt_editorials": "nytEditorialSnippets_GroundTruth.txt",
    "amazon_reviews": "amazonReviewSnippets_GroundTruth.txt",
}
LABELS = ("negative", "positive")
MIN_ABS_RATING = 0.5  # |mean rating| below this is too close to neutral to call: dropped
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # the rest is "train"
SPLIT_NAMES = ("train", "validation", "test")
SPLIT_SEED = "headlight-vader-1"
HEADER = "label\tsource\ttext"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

T = TypeVar("T")


class DataError(HeadlightError):
    """The data cannot be fetched or read: download failed, checksum mismatch, malformed line."""


@dataclass(frozen=True)
class RatedSentence:
    """One line of a VADER ground-truth file."""

    source: str
    id: str
    rating: float
    text: str


@dataclass(frozen=True)
class Example:
    """One labelled sentence, as stored in the split files."""

    label: str
    source: str
    text: str


def download_sdist(dest: str | Path) -> Path:
    """Fetch the vaderSentiment 3.3.2 source distribution into ``dest`` with pip; return the file's path.

    Raises:
        DataError: pip failed (offline, no index) or the file is not the published one.
    """
    dest = Path(dest)
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
               "--no-binary", ":all:", PACKAGE, "-d", str(dest)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataError(f"Could not run pip to download {PACKAGE}: {error}") from error
    path = dest / SDIST_NAME
    if result.returncode != 0 or not path.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise DataError(
            f"Downloading {PACKAGE} from PyPI failed (pip exit code {result.returncode}):\n{tail}\n"
            f"Check your connection or pip index settings, or download {SDIST_NAME} elsewhere and pass it with "
            "--sdist PATH. The processed split is committed under data/, so training does not need this step."
        )
    return path


def read_sdist(sdist: str | Path) -> tuple[list[RatedSentence], str]:
    """Every sentence of the four ground-truth files in the sdist (file order, sources in ``SOURCES`` order), and
    the package's licence text.

    Raises:
        DataError: the file is missing, is not the published sdist (sha256), or its contents are malformed.
    """
    sdist = Path(sdist)
    try:
        raw = sdist.read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read {sdist}: {error}") from error
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SDIST_SHA256:
        raise DataError(
            f"{sdist} is not the published {SDIST_NAME} (sha256 {digest[:12]}..., expected {SDIST_SHA256[:12]}...)."
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as outer:
            inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
            licence = outer.extractfile(LICENCE_FILE).read().decode("utf-8")
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            files = {source: inner.extractfile(f"hutto_ICWSM_2014/{name}").read()
                     for source, name in SOURCES.items()}
    except (tarfile.TarError, KeyError, AttributeError, UnicodeDecodeError) as error:
        raise DataError(f"{sdist} does not contain the expected {INNER_ARCHIVE} files: {error}") from error
    return [row for source, content in files.items() for row in parse_ground_truth(content, source)], licence


def parse_ground_truth(content: bytes, source: str) -> list[RatedSentence]:
    """Parse one ground-truth file: UTF-8, CRLF lines of ``id<TAB>rating<TAB>sentence``.

    The sentence is HTML-unescaped (the tweets hold ``&amp;``) and its whitespace collapsed to single spaces.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{source}: the ground-truth file is not UTF-8: {error}") from error
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"{source} line {number}: expected id, rating and sentence separated by tabs, "
                            f"got {len(fields)} fields: {line[:80]!r}")
        identifier, rating, sentence = fields
        try:
            value = float(rating)
        except ValueError as error:
            raise DataError(f"{source} line {number}: rating {rating!r} is not a number") from error
        rows.append(RatedSentence(source, identifier.strip(), value, clean_text(sentence)))
    return rows


def clean_text(text: str) -> str:
    """HTML-unescape (repeatedly: some NYT lines hold ``&amp;amp;``) and collapse every run of whitespace (tabs and
    newlines included) to one space."""
    unescaped = html.unescape(text)
    while unescaped != text:
        text, unescaped = unescaped, html.unescape(unescaped)
    return " ".join(text.split())


def select_sentences(rows: Sequence[RatedSentence], min_abs_rating: float = MIN_ABS_RATING) -> list[RatedSentence]:
    """Keep sentences with ``|rating| >= min_abs_rating`` whose text (case- and space-insensitively) was not seen
    before; the first occurrence wins, so no sentence can land in two splits."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = " ".join(row.text.lower().split())
        if abs(row.rating) < min_abs_rating or not key or key in seen:
            continue
        seen.add(key)
        kept.append(row)
    return kept


def label_of(rating: float) -> str:
    """"positive" for a rating above zero, "negative" below (zero never reaches here)."""
    return LABELS[1] if rating > 0 else LABELS[0]


def stratified_split(
    items: Sequence[T],
    group: Callable[[T], str],
    identity: Callable[[T], str],
    seed: str = SPLIT_SEED,
    fractions: dict[str, float] = SPLIT_FRACTIONS,
) -> dict[str, list[T]]:
    """Split ``items`` into train/validation/test, the same fractions within every group.

    Within a group items are ordered by ``sha256(seed/group/identity)``: validation takes the first
    ``round(n * fractions["validation"])``, test the next ``round(n * fractions["test"])``, train the rest. The
    order depends on nothing but the strings, so it is the same on every machine and library version.
    Output lists keep the input order.
    """
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group(item), []).append(index)
    assignment: dict[int, str] = {}
    for name, indices in groups.items():
        ranked = sorted(indices, key=lambda i: hashlib.sha256(f"{seed}/{name}/{identity(items[i])}".encode())
                        .hexdigest())
        n_validation = round(len(ranked) * fractions["validation"])
        n_test = round(len(ranked) * fractions["test"])
        for position, index in enumerate(ranked):
            assignment[index] = ("validation" if position < n_validation
                                 else "test" if position < n_validation + n_test else "train")
    splits: dict[str, list[T]] = {name: [] for name in SPLIT_NAMES}
    for index, item in enumerate(items):
        splits[assignment[index]].append(item)
    return splits


def build_splits(rows: Sequence[RatedSentence]) -> dict[str, list[Example]]:
    """Select, label and split the VADER sentences, stratified by source and label."""
    selected = select_sentences(rows)
    splits = stratified_split(selected, group=lambda r: f"{r.source}/{label_of(r.rating)}",
                              identity=lambda r: r.id)
    return {name: [Example(label_of(r.rating), r.source, r.text) for r in part] for name, part in splits.items()}


def write_split(path: str | Path, examples: Sequence[Example]) -> Path:
    """Write ``label<TAB>source<TAB>text`` lines under a header, UTF-8, LF line ends."""
    path = Path(path)
    lines = [HEADER] + [f"{e.label}\t{e.source}\t{e.text}" for e in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return path


def read_split(path: str | Path) -> list[Example]:
    """Read a split file written by ``write_split``.

    Raises:
        DataError: missing file, wrong header, or a line without exactly three tab-separated fields.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read {path}: {error}. Build the data with `make data`.") from error
    if not lines or lines[0] != HEADER:
        raise DataError(f"{path} does not start with the header {HEADER!r}")
    examples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not all(fields):
            raise DataError(f"{path} line {number}: expected label, source and text separated by tabs")
        examples.append(Example(*fields))
    return examples


def load_splits(folder: str | Path = DATA_DIR) -> dict[str, list[Example]]:
    """The committed train/validation/test examples (``data/{train,validation,test}.tsv``)."""
    return {name: read_split(Path(folder) / f"{name}.tsv") for name in SPLIT_NAMES}


def read_labelled_file(path: str | Path, source: str = "custom") -> list[Example]:
    """A user's own data: one ``label<TAB>text`` example per line (labels any strings; blank lines skipped).

    Raises:
        DataError: unreadable file, a line without a tab, an empty label or text, or fewer than two labels.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read {path}: {error}") from error
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        label, text = label.strip(), clean_text(text)
        if not tab or not label or not text:
            raise DataError(f"{path} line {number}: expected 'label<TAB>text', got {line[:80]!r}")
        examples.append(Example(label, source, text))
    labels = Counter(e.label for e in examples)
    if len(labels) < 2:
        raise DataError(f"{path}: a classifier needs at least two labels, found {sorted(labels) or 'none'}")
    return examples


def split_labelled(examples: Sequence[Example], seed: str = SPLIT_SEED) -> dict[str, list[Example]]:
    """Split a user's examples 80/10/10, stratified by label; line order decides nothing but ties."""
    numbered = list(enumerate(examples))
    splits = stratified_split(numbered, group=lambda item: item[1].label,
                              identity=lambda item: f"{item[0]}/{item[1].text}", seed=seed)
    return {name: [example for _, example in part] for name, part in splits.items()}


def count_table(splits: dict[str, Sequence[Example]]) -> list[tuple[str, str, dict[str, int]]]:
    """(source, label, {split: count}) rows, sources in ``SOURCES`` order then any others, labels sorted."""
    counts = Counter((name, e.source, e.label) for name, part in splits.items() for e in part)
    sources = [s for s in SOURCES if any(k[1] == s for k in counts)]
    sources += sorted({k[1] for k in counts} - set(sources))
    labels = sorted({k[2] for k in counts})
    return [(s, lab, {name: counts[(name, s, lab)] for name in SPLIT_NAMES}) for s in sources for lab in labels]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def readme_text(splits: dict[str, Sequence[Example]], rows_total: int, after_threshold: int, folder: Path) -> str:
    """data/README.md: credit, licence, the labelling rule, the split, the files (with sha256 from ``folder``) and
    the counts table."""
    table = ["| source | label | train | validation | test | total |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for source, label, counts in count_table(splits):
        table.append(f"| {source} | {label} | " + " | ".join(str(counts[n]) for n in SPLIT_NAMES)
                     + f" | {sum(counts.values())} |")
    totals = {name: len(part) for name, part in splits.items()}
    table.append("| **all** | | " + " | ".join(str(totals[n]) for n in SPLIT_NAMES) + f" | {sum(totals.values())} |")
    files = "\n".join(f"- `{name}.tsv`: {totals[name]} sentences, sha256 `{file_sha256(folder / f'{name}.tsv')}`"
                      for name in SPLIT_NAMES)
    return f"""# Sentiment data for the tutorial model

Built by `make data` (`python -m tutorial.dataset`); the tutorial model in `models/tutorial/` is trained on it.

## Source and credit

The sentences and their ratings are the ground-truth data of

> Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
> Media Text. Eighth International Conference on Weblogs and Social Media (ICWSM-14). Ann Arbor, MI, June 2014.

as shipped inside the source distribution of the PyPI package `{PACKAGE}`
(`{SDIST_NAME}`, sha256 `{SDIST_SHA256}`),
file `additional_resources/hutto_ICWSM_2014.tar.gz`, under the MIT licence (Copyright (c) 2016 C.J. Hutto; the
package's licence text is copied to `LICENSE-VADER.txt` here).
Four files, each line `id<TAB>mean rating<TAB>sentence`, the rating being the mean of at least 20 human ratings
from -4 (extremely negative) to +4 (extremely positive):

| source | file | what |
| --- | --- | --- |
| movie_reviews | `movieReviewSnippets_GroundTruth.txt` | sentences of rottentomatoes.com reviews (Pang & Lee, 2004) |
| tweets | `tweets_GroundTruth.txt` | tweet-like texts (with `@anonymous`, `http://url_removed`) |
| nyt_editorials | `nytEditorialSnippets_GroundTruth.txt` | sentences of New York Times opinion pieces |
| amazon_reviews | `amazonReviewSnippets_GroundTruth.txt` | sentences of Amazon product reviews (Hu & Liu, 2004) |

## Labelling rule

- Text: HTML entities unescaped (`&amp;` and `&amp;amp;` become `&`), whitespace collapsed to single spaces;
  nothing else changed.
- Label: `positive` when the mean rating is above zero, `negative` below.
- Dropped: sentences with `|mean rating| < {MIN_ABS_RATING}` (too close to neutral for a sign to mean much), and
  repeats of a sentence already kept (compared lower-cased, ignoring spacing; the first in file order, sources in
  the order above, wins), so no sentence is in two splits.

Of {rows_total} sentences, {after_threshold} have `|rating| >= {MIN_ABS_RATING}`; {sum(totals.values())} \
remain after removing repeats.

## Split

Stratified by source and label: within each (source, label) group sentences are ordered by
`sha256("{SPLIT_SEED}/<source>/<label>/<id>")`; the first 10% (rounded) go to validation, the next 10% to
test, the rest to train. The rule depends only on those strings, so it gives the same split everywhere.

## Files

UTF-8, LF line ends, a header line `label<TAB>source<TAB>text`, then one sentence per line in file order.

{files}

## Counts

{chr(10).join(table)}
"""


def build(out: str | Path = DATA_DIR, sdist: str | Path | None = None) -> dict[str, list[Example]]:
    """Fetch (unless ``sdist`` is given), select, label and split; write the TSV files, README.md and the
    licence to ``out``."""
    out = Path(out)
    if sdist is None:
        with tempfile.TemporaryDirectory() as temp:
            rows, licence = read_sdist(download_sdist(temp))
    else:
        rows, licence = read_sdist(sdist)
    splits = build_splits(rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        write_split(out / f"{name}.tsv", examples)
    after_threshold = sum(abs(r.rating) >= MIN_ABS_RATING for r in rows)
    (out / "LICENSE-VADER.txt").write_text(licence, encoding="utf-8")
    (out / "README.md").write_text(readme_text(splits, len(rows), after_threshold, out), encoding="utf-8")
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tutorial.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"use this {SDIST_NAME} instead of downloading it")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: data/)")
    args = parser.parse_args(argv)
    try:
        splits = build(args.out, args.sdist)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, examples in splits.items():
        labels = Counter(e.label for e in examples)
        print(f"{name:<10} {len(examples):>6} sentences  " + "  ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    print(f"wrote {', '.join(f'{n}.tsv' for n in SPLIT_NAMES)}, README.md and LICENSE-VADER.txt to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
