"""A decoder of today's size: a SmolLM2-135M-shaped Llama (30 layers, 9 query heads sharing 3 key/value heads,
width 576, feed-forward 1536, vocabulary 49,152, tied embeddings, rope_theta 100,000) with random weights, made here
by ``transformers`` (``LlamaForCausalLM`` + ``save_pretrained``; no download) with a byte-level BPE tokenizer
trained on ``data/train.tsv`` and padded to 49,152 ids.

Against ``transformers`` (PyTorch, eager attention), runs alternating (ours, theirs, ours, ...):

- trace at 128 and 512 tokens: both tokenize, run the model with every attention map and hidden state, and hand
  them back as NumPy arrays, with each position's top-10 next tokens and the log-probability of the token that
  follows (Headlight's trace holds them; on the PyTorch side ``topk`` and ``log_softmax`` of the logits);
- generation: 32 new tokens from a 64-token prompt, greedy, no stop at the end-of-text token; ours
  (``encoder.generate.generate_text``, a trace of prompt + continuation) against ``generate`` with its KV cache;
- peak memory: each side alone in a fresh process (the model loaded, a 512-token trace, a generation), its peak
  resident memory (VmHWM) and the part of it above the memory after the imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["HF_HUB_OFFLINE"] = "1"  # local folders only

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
             intermediate_size=1536, vocab_size=49_152, max_position_embeddings=8192, rope_theta=100_000.0,
             rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", initializer_range=0.02,
             bos_token_id=0, eos_token_id=0, pad_token_id=None)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # SmolLM2's first ids
LENGTHS = (128, 512)
PROMPT_TOKENS, NEW_TOKENS = 64, 32
TOP_K = 10
SEED = 135
REPEATS = {128: 15, 512: 6, "generate": 5}
WARM_UPS = 3  # untimed traces of each length on each side before the timed ones


def make_folder(folder: Path) -> Path:
    """The model folder: config.json + model.safetensors by ``save_pretrained``, and tokenizer.json."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer(SHAPE["vocab_size"]).save(str(folder / "tokenizer.json"))
    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(**SHAPE)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[0],
        "unk_token": SPECIALS[0], "model_max_length": SHAPE["max_position_embeddings"]}))
    return folder


def _tokenizer(size: int):
    """GPT-2-style byte-level BPE (SmolLM2's kind: nothing added around the text) trained on the project's
    sentences, its vocabulary padded with unused pieces to ``size`` ids so that every id the model can produce
    has a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    lines = (ROOT / "data" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((line.split("\t")[-1] for line in lines), trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for index in range(len(vocab), size):
        vocab[f"<unused_{index}>"] = index
    return Tokenizer.from_str(json.dumps(data))


def _threads() -> None:
    import torch

    from bench.common import bench_threads

    torch.set_num_threads(bench_threads())


def theirs_runners(folder: Path) -> dict:
    """transformers' side: ``trace(text)`` -> (attention (L, H, T, T), hidden (L + 1, T, D), top-k ids (T, K),
    log-probability of the next token (T,)) as NumPy; ``generate(prompt)`` -> the new ids (N,)."""
    import torch
    import transformers

    _threads()
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # no stop at the end-of-text token
    model.generation_config.pad_token_id = 0

    def trace(text: str):
        batch = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            out = model(**batch, output_attentions=True, output_hidden_states=True)
            top, next_logprob = next_token_outputs(out.logits[0], batch["input_ids"][0])
        return (np.stack([a[0].numpy() for a in out.attentions]),
                np.stack([h[0].numpy() for h in out.hidden_states]), top, next_logprob)

    def generate(prompt: str) -> np.ndarray:
        batch = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 use_cache=True)
        return out[0, batch["input_ids"].shape[1]:].numpy()

    return {"trace": trace, "generate": generate, "tokenizer": tokenizer}


def next_token_outputs(logits, ids) -> tuple[np.ndarray, np.ndarray]:
    """What a Headlight trace holds of a decoder's (T, V) torch ``logits`` on ``ids`` (T,): the top-k ids (T, K)
    and the log-probability of the token that follows (T,), NaN last."""
    import torch

    top = torch.topk(torch.softmax(logits, -1), TOP_K, dim=-1)
    next_logprob = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0]
    return top.indices.numpy(), np.append(next_logprob.numpy(), np.nan)


def ours_runners(folder: Path) -> dict:
    """Headlight's side, returning the same as ``theirs_runners``; and ``loop(prompt)``, the generation loop alone
    (``generate_ids``: prefill and cached steps, no trace of the final sequence)."""
    from encoder.generate import generate_ids, generate_text
    from encoder.sources import load_path
    from encoder.trace import trace_text

    loaded = load_path(folder, name="smollm2-shaped")

    def trace(text: str):
        result = trace_text(loaded, text)
        return (result.attention, result.hidden, result.outputs["next_ids"][:, :TOP_K],
                result.outputs["next_logprob"])

    def generate(prompt: str) -> np.ndarray:
        result = generate_text(loaded, prompt, max_new_tokens=NEW_TOKENS)
        return np.asarray(result.token_ids)[result.generated]

    def loop(prompt: str) -> np.ndarray:
        return generate_ids(loaded, loaded.tokenizer.encode(prompt).token_ids, max_new_tokens=NEW_TOKENS).ids

    return {"trace": trace, "generate": generate, "loop": loop, "loaded": loaded}


def texts(folder: Path) -> dict:
    """The texts of 128 and 512 tokens and the 64-token prompt, real prose cut to length by our tokenizer."""
    from bench.encoder import text_of_length
    from encoder.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_folder(folder, SHAPE["max_position_embeddings"])
    return {**{n: text_of_length(tokenizer, n) for n in LENGTHS}, "prompt": text_of_length(tokenizer, PROMPT_TOKENS)}


def _alternate(runs: dict, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall seconds, CPU seconds of this process) of each of ``runs`` (name -> call), alternating."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            samples[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
    return samples


def _medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall and CPU milliseconds."""
    walls, cpus = zip(*samples)
    return 1000 * float(np.median(walls)), 1000 * float(np.median(cpus))


def _row(what: str, tokens, samples: dict, **extra) -> dict:
    (ours, ours_cpu), (theirs, theirs_cpu) = _medians(samples["ours"]), _medians(samples["theirs"])
    return {"what": what, "tokens": tokens, "Headlight": f"{ours:.0f} ms", "transformers": f"{theirs:.0f} ms",
            "ratio (<= 1 is faster)": f"{ours / theirs:.2f}",
            "CPU ms Headlight / transformers": f"{ours_cpu:.0f} / {theirs_cpu:.0f} ({ours_cpu / theirs_cpu:.2f})",
            **extra}


def trace_row(n: int, text: str, ours: dict, theirs: dict) -> dict:
    """Trace at ``n`` tokens: medians of alternating runs, and how far the two sides' numbers are apart."""
    a, hidden_a, top_a, logprob_a = ours["trace"](text)  # warm up (and compile) both
    b, hidden_b, top_b, logprob_b = theirs["trace"](text)
    layers, heads = SHAPE["num_hidden_layers"], SHAPE["num_attention_heads"]
    assert a.shape == b.shape == (layers, heads, n, n), (a.shape, b.shape)
    assert hidden_a.shape == hidden_b.shape == (layers + 1, n, SHAPE["hidden_size"]), (hidden_a.shape, hidden_b.shape)
    samples = _alternate({"ours": lambda: ours["trace"](text), "theirs": lambda: theirs["trace"](text)},
                         REPEATS[n])
    return _row("trace", n, samples, **{
        "max |attention diff|": f"{np.abs(a - b).max():.1e}",
        "max |hidden diff|": f"{np.abs(hidden_a - hidden_b).max():.1e}",
        "same top-1": f"{np.mean(top_a[:, 0] == top_b[:, 0]):.0%}",
        "max |log-prob diff|": f"{np.nanmax(np.abs(logprob_a - logprob_b)):.1e}"})


def generate_rows(prompt: str, ours: dict, theirs: dict) -> list[dict]:
    """Generation of ``NEW_TOKENS`` after the prompt, medians of alternating runs: ``generate_text`` (the loop and
    a trace of the whole sequence: what a user gets) and the loop alone, each against ``generate``; and how many
    ids agree from the start."""
    ids_a, ids_b, ids_loop = ours["generate"](prompt), theirs["generate"](prompt), ours["loop"](prompt)
    assert ids_a.shape == ids_b.shape == ids_loop.shape == (NEW_TOKENS,), (ids_a.shape, ids_b.shape)
    samples = _alternate({"ours": lambda: ours["generate"](prompt), "theirs": lambda: theirs["generate"](prompt),
                          "loop": lambda: ours["loop"](prompt)}, REPEATS["generate"])
    same = f"{int(np.cumprod(ids_a == ids_b).sum())} of {NEW_TOKENS} ids equal (from the start)"
    tokens = f"{PROMPT_TOKENS} + {NEW_TOKENS}"
    return [_row("generate_text (+ trace)", tokens, samples, **{"same top-1": same}),
            _row("generate_ids (loop)", tokens, {"ours": samples["loop"], "theirs": samples["theirs"]},
                 **{"same top-1": same})]


# One side alone in a fresh process: prints its peak resident memory after loading, a 512-token trace and a
# generation, and the memory in use after the imports.
MEMORY_PROBE = """
import json, sys
from pathlib import Path
import bench.decoder as bench


def status(field):  # kB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


side, folder, text, prompt = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
if side == "ours":
    import encoder.generate, encoder.sources, encoder.trace
else:
    import torch, transformers
imports = status("VmRSS")
runners = (bench.ours_runners if side == "ours" else bench.theirs_runners)(folder)
loaded = status("VmRSS")
runners["trace"](text)
runners["generate"](prompt)
print(json.dumps({"imports": imports / 1024, "loaded": loaded / 1024, "peak": status("VmHWM") / 1024}))
"""


def memory_rows(folder: Path, text: str, prompt: str) -> list[dict]:
    rows = []
    for side, name in (("ours", "Headlight"), ("theirs", "transformers")):
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, side, str(folder), text, prompt], cwd=ROOT,
                                capture_output=True, text=True, timeout=900)
        if result.returncode:
            raise RuntimeError(result.stderr[-3000:])
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append({"side": name, "after the imports": f"{measured['imports']:.0f} MB",
                     "model loaded": f"{measured['loaded']:.0f} MB",
                     "peak (512-token trace, generation)": f"{measured['peak']:.0f} MB",
                     "peak above the imports": f"{measured['peak'] - measured['imports']:.0f} MB"})
    return rows


def main() -> list[dict]:
    from bench.common import print_table

    with tempfile.TemporaryDirectory(prefix="headlight-decoder-") as temp:
        folder = make_folder(Path(temp) / "smollm2-shaped")
        inputs = texts(folder)
        theirs = theirs_runners(folder)
        ours = ours_runners(folder)
        for _ in range(WARM_UPS):  # first calls fault in fresh memory (slow in a VM) and compile: not measured
            for n in LENGTHS:
                ours["trace"](inputs[n])
                theirs["trace"](inputs[n])
        rows = [trace_row(n, inputs[n], ours, theirs) for n in LENGTHS]
        rows += generate_rows(inputs["prompt"], ours, theirs)
        print_table("Decoder, SmolLM2-135M-shaped Llama (30 layers, 9 / 3 heads, d=576, vocabulary 49,152), "
                    "median of alternating runs", rows)
        del ours, theirs
        print_table("Decoder, peak memory of each side alone in a fresh process (resident, VmHWM)",
                    memory_rows(folder, inputs[512], inputs["prompt"]))
    return []


if __name__ == "__main__":
    main()
