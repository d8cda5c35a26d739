"""The page's default input, shared by the sidebar (``app.py``) and the start-up warm-up's first trace
(``ui.cache.start_warm_up``), which traces exactly what the first visitor sees; and a decoder's default prompt."""

from __future__ import annotations

from encoder.settings import settings

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


def token_limit(max_positions: int) -> int:
    """The most tokens a trace may have: the model's positions, or the server's cap if lower."""
    return min(max_positions, settings().max_tokens)
