"""The page's default input, shared by the sidebar (``app.py``) and the start-up warm-up's first trace
(``ui.cache.start_warm_up``), which traces exactly what the first visitor sees; and a decoder's default prompt."""

from __future__ import annotations

from encoder.attention_store import EAGER_MAX_BYTES, EAGER_MAX_TOKENS, piece_limit
from encoder.config import EncoderConfig
from encoder.overview import OVERVIEW_CELLS, OVERVIEW_MIN_TOKENS
from encoder.settings import settings
from viz.long_inputs import image_limit
from viz.scrub import steps_limit

TRACE_TOKEN_BYTES = 1024  # a token's share of the rest of a trace: ids, top next-token candidates, words, ...

EXAMPLES = {
    "The cat sat on the mat because it was tired.": "",
    "The animal didn't cross the street because it was too tired.": "",
    "Where is the station?": "The station is two blocks north of the museum.",
    "A wonderful, moving film with a brilliant cast.": "",
    "The keys to the cabinet are on the table.": "",
    "Attention is all you need — 注意力就是你所需要的一切 🙂!": "",
    "Once upon a time, there was": "",  # prompts for a decoder to continue
    "The capital of France is": "",
}
DEFAULT_TEXT = next(iter(EXAMPLES))
DEFAULT_PROMPT = "Once upon a time, there was"  # a decoder's default text (app.prompt_for_decoder)
DEFAULT_TARGET = "Die Katze saß auf der Matte, weil sie müde war."  # an encoder-decoder's target (app.target_ui)


def token_limit(max_positions: int, config: EncoderConfig | None = None) -> int:
    """The most tokens a trace may have: the model's positions, or the server's cap if lower; given the model's
    ``config``, also the most whose trace the cache keeps (``cached_tokens``), so a change of view never re-runs
    the model."""
    limit = min(max_positions, settings().max_tokens)
    return limit if config is None else cached_tokens(config, limit)


def trace_budget() -> int:
    """Bytes the app's cache gives traces and results (``ui.cache.RESULTS``): ``HEADLIGHT_CACHE_MB`` less what the
    long traces' attention pieces (``encoder.attention_store.piece_limit``: a half) and their heads' block images
    (``viz.long_inputs.image_limit``: an eighth, at most 128 MB) and the in-figure head sliders' kept steps
    (``viz.scrub.steps_limit``: a thirty-second, at most 32 MiB) may hold."""
    return settings().cache_bytes - piece_limit() - image_limit() - steps_limit()


def trace_bytes(config: EncoderConfig, tokens: int) -> int:
    """An upper estimate of the bytes a trace of ``tokens`` tokens holds: its hidden states and positional rows,
    and its attention: the (L, H, T, T) array, or for a long trace (``encoder.trace.traced_lazily``'s rule) its
    overview images above ``OVERVIEW_MIN_TOKENS`` (L x H x ``OVERVIEW_CELLS``² float32; its queries and keys are
    computed again from the hidden states, into the pieces' LRU); plus ``TRACE_TOKEN_BYTES`` a token of the rest."""
    per_token = 4 * (config.num_layers + 2) * config.d_model + TRACE_TOKEN_BYTES
    whole = 4 * config.num_layers * config.num_heads * tokens * tokens
    if tokens > EAGER_MAX_TOKENS and whole > EAGER_MAX_BYTES:
        images = 4 * config.num_layers * config.num_heads * min(OVERVIEW_CELLS, tokens) ** 2
        return tokens * per_token + (images if tokens > OVERVIEW_MIN_TOKENS else 0)
    return tokens * per_token + whole


def cached_tokens(config: EncoderConfig, limit: int) -> int:
    """The most tokens, up to ``limit``, whose trace (``trace_bytes``) fits the cache's ``trace_budget`` (at
    least 8)."""
    budget = trace_budget()
    return next((tokens for tokens in range(limit, 8, -1) if trace_bytes(config, tokens) <= budget), min(8, limit))
