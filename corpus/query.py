"""``python -m cli corpus query DIR ...``: ask a corpus index the Corpus tab's questions in batch, as readable text
or (``--json``) one JSON document.

- ``top --layer L --head H [--k K]``: the head's strongest attention edges over the corpus, with their sentences;
- ``deciles --layer L --head H``: the sentence at each decile of the index's decile statistic;
- ``near --layer L --text "..." --token I [--model M] [--k K]``: the contexts nearest token I of the text at layer L
  (0: the embeddings); the model (default: the index's own name) is traced after its weights' checksum is checked
  against the index's, so vectors of another model are never compared;
- ``summary --statistic S [--layer L --head H]``: every head's corpus mean of S (an L x H table), or one head's
  mean and deciles of every statistic.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from corpus.format import STATISTIC_NAMES, CorpusError, model_checksum
from corpus.index import CorpusIndex
from encoder.errors import HeadlightError, index_in_range

QUESTIONS = ("top", "deciles", "near", "summary")
EXAMPLES = """examples:
  python -m cli corpus query idx top --layer 2 --head 5 --k 5
  python -m cli corpus query idx deciles --layer 0 --head 3 --json
  python -m cli corpus query idx near --layer 6 --text "The bank by the river." --token 2
  python -m cli corpus query idx summary --statistic previous"""


def query_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli corpus query", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("folder", metavar="DIR", help="an index folder (python -m cli corpus build)")
    questions = parser.add_subparsers(dest="question", required=True, metavar="{" + ",".join(QUESTIONS) + "}")
    top = questions.add_parser("top", help="a head's strongest attention edges over the corpus")
    deciles = questions.add_parser("deciles", help="a head's example sentence at each decile")
    near = questions.add_parser("near", help="the contexts nearest a token of a text, at a layer")
    summary = questions.add_parser("summary", help="every head's mean of a statistic, or one head's summary")
    for question in (top, deciles, near, summary):
        question.add_argument("--json", action="store_true", help="one JSON document instead of text")
    for question in (top, deciles):
        question.add_argument("--layer", type=int, required=True)
        question.add_argument("--head", type=int, required=True)
    top.add_argument("--k", type=int, default=10, help="how many edges (at most the index's top_k; default 10)")
    near.add_argument("--layer", type=int, required=True, help="a layer the index holds contexts of")
    near.add_argument("--text", required=True, help="the text whose token to look up")
    near.add_argument("--token", type=int, required=True, help="the token's position in the traced text (0-based)")
    near.add_argument("--model", help="the model to trace with (default: the index's model name); it must be the "
                                      "model the index was built with (its checksum is compared)")
    near.add_argument("--k", type=int, default=10, help="how many contexts (default 10)")
    summary.add_argument("--statistic", choices=STATISTIC_NAMES, default="entropy")
    summary.add_argument("--layer", type=int)
    summary.add_argument("--head", type=int)
    return parser


def run_query(argv: Sequence[str]) -> str:
    """The answer to ``python -m cli corpus query`` with ``argv`` (after ``query``), as the text to print."""
    args = query_parser().parse_args(list(argv))
    index = CorpusIndex.open(args.folder)
    answer = {"top": _top, "deciles": _deciles, "near": _near, "summary": _summary}[args.question](index, args)
    text = answer.pop("text")
    return json.dumps(answer, indent=1) if args.json else text


def _quoted(index: CorpusIndex, sentence: int, mark: tuple[int, ...] = ()) -> str:
    """The sentence's tokens, those at ``mark`` in [brackets]."""
    tokens = index.sentence(sentence).tokens
    return " ".join(f"[{token}]" if position in mark else token for position, token in enumerate(tokens))


def _top(index: CorpusIndex, args) -> dict:
    edges = index.top_examples(args.layer, args.head, args.k)
    rows = [{**asdict(edge), "query_token": index.sentence(edge.sentence).tokens[edge.query],
             "key_token": index.sentence(edge.sentence).tokens[edge.key]} for edge in edges]
    lines = [f"Strongest attention edges of layer {args.layer}, head {args.head} over "
             f"{index.num_sentences:,} sentences:"]
    lines += [f"{row['rank'] + 1:>3}. {row['weight']:.3f}  sentence {row['sentence']}: {row['query_token']} -> "
              f"{row['key_token']}   {_quoted(index, row['sentence'], (row['query'], row['key']))}" for row in rows]
    return {"layer": args.layer, "head": args.head, "edges": rows, "text": "\n".join(lines)}


def _deciles(index: CorpusIndex, args) -> dict:
    examples = [asdict(example) for example in index.decile_examples(args.layer, args.head)]
    lines = [f"Layer {args.layer}, head {args.head}: the sentence nearest each decile of "
             f"{index.decile_statistic!r}:"]
    lines += [f"  q{row['decile']:<2} {row['value']:.4f}  sentence {row['sentence']}: "
              f"{_quoted(index, row['sentence'])}" for row in examples]
    return {"layer": args.layer, "head": args.head, "statistic": index.decile_statistic, "examples": examples,
            "text": "\n".join(lines)}


def _near(index: CorpusIndex, args) -> dict:
    from encoder.sources import load_source
    from encoder.trace import trace_text

    if args.layer not in index.context_layers:
        raise CorpusError(f"the index has no contexts of layer {args.layer}; it has layers "
                          f"{', '.join(map(str, index.context_layers))}")
    model = load_source(args.model or index.model_name)
    if model_checksum(model) != index.model_checksum:
        raise CorpusError("this model is not the one the index was built with (their weights' checksums differ): "
                          "give the index's model with --model")
    trace = trace_text(model, args.text, max_tokens=index.manifest["options"]["max_tokens"])
    token = index_in_range(args.token, len(trace.tokens), "token", "text")
    found = index.nearest(args.layer, trace.hidden[args.layer][token], args.k)
    rows = [asdict(neighbour) for neighbour in found]
    lines = [f"Contexts nearest {trace.tokens[token]!r} (token {token}) at layer {args.layer}, by cosine "
             f"({index.context_index_info(args.layer)['kind']} search):"]
    lines += [f"  {row['score']:.3f}  sentence {row['sentence']}, token {row['position']} {row['token']!r}: "
              f"{_quoted(index, row['sentence'], (row['position'],))}" for row in rows]
    return {"layer": args.layer, "token": token, "tokens": list(trace.tokens), "neighbours": rows,
            "text": "\n".join(lines)}


def _summary(index: CorpusIndex, args) -> dict:
    if (args.layer is None) != (args.head is None):
        raise CorpusError("give both --layer and --head for one head's summary, or neither for every head's mean")
    if args.layer is not None:
        summary = index.summary(args.layer, args.head)
        lines = [f"Layer {args.layer}, head {args.head} over {index.num_sentences:,} sentences "
                 "(mean; deciles q0 q5 q10):"]
        lines += [f"  {name:12} {row['mean']:.4f}  ({row['deciles'][0]:.4f} {row['deciles'][5]:.4f} "
                  f"{row['deciles'][10]:.4f})" for name, row in summary.items()]
        return {"layer": args.layer, "head": args.head, "summary": summary, "text": "\n".join(lines)}
    means = index.head_map(args.statistic)
    header = "layer " + " ".join(f"{f'h{head}':>7}" for head in range(means.shape[1]))
    lines = [f"Mean {args.statistic!r} of every head over {index.num_sentences:,} sentences:", header]
    lines += [f"{layer:>5} " + " ".join(f"{value:7.4f}" for value in row) for layer, row in enumerate(means)]
    return {"statistic": args.statistic, "means": means.tolist(), "text": "\n".join(lines)}


def main(argv: Sequence[str]) -> int:
    """``python -m cli corpus query ...``: print the answer; 2 (and the message) when the index or the question is
    bad."""
    try:
        print(run_query(argv))
    except HeadlightError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    return 0
