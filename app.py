"""Headlight: a Streamlit page to look inside Transformer encoders."""

import streamlit as st

from encoder.sources import DEFAULT_SOURCE, load_source
from encoder.trace import trace_text

st.set_page_config(page_title="Headlight", layout="wide")
st.title("Headlight")
text = st.text_input("Text", "The cat sat on the mat because it was tired.")
trace = trace_text(st.cache_resource(load_source)(DEFAULT_SOURCE), text)
st.write(" ".join(trace.tokens))
st.write(f"attention: {trace.attention.shape}")
