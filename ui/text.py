"""Text from outside (what a visitor typed, a model's description and labels, an uploaded file's name, our messages
that may quote them) made safe for Streamlit's markdown-rendering elements (``st.markdown``, ``st.caption``,
``st.error``, ...): shown exactly as written, never as a link, an image, HTML, a heading, LaTeX or a colour tag."""

from __future__ import annotations

import re

# Every ASCII punctuation character: CommonMark lets a backslash escape each of them, and escaped they start no
# markup (links, images, HTML, emphasis, headings, Streamlit's ":red[...]" and ":emoji:", LaTeX's "$").
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GitHub's autolinks are found in the text after escapes are resolved: "http://", "www." and "@" each get an
# invisible word joiner, so no address becomes a link.
_AUTOLINK = re.compile(r"(?i)(://|\bwww(?=\.)|@)")
WORD_JOINER = "\u2060"


def plain(text: object) -> str:
    r"""``text`` as markdown that renders as exactly these characters (web and mail addresses with an invisible
    word joiner inside, so they are not links).

    Example:
        >>> plain("**bold** ![x](y.png)")
        '\\*\\*bold\\*\\* \\!\\[x\\]\\(y\\.png\\)'
    """
    return _PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub(rf"\1{WORD_JOINER}", str(text)))
