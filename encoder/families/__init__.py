"""Hugging Face families, one module each: a pure ``convert_config(hf_config) -> EncoderConfig`` and a flat
``weight_ports(config, model)`` list of (checkpoint name, Keras variable, transform), every shape checked by
``encoder.checkpoints.port_weights`` before anything is assigned.

``FAMILIES`` maps each ``model_type`` of ``config.json`` to its module; adding a family is one module plus one line
here. Each module also names ``PREFIXES``: the prefixes task models put before the backbone's tensors
(``roberta.`` in ``RobertaForSequenceClassification``), stripped before the names are looked up. An
encoder-decoder's family (``t5``, ``bart``) also has ``decoder_config(hf_config, encoder_config)`` (None when the
checkpoint is its encoder alone), ``decoder_weight_ports(config, model)`` and ``DECODER_START``, the
``decoder_start_token_id`` when ``config.json`` gives none.
"""

from __future__ import annotations

from types import ModuleType

from encoder.families import (
    albert,
    bart,
    bert,
    clip,
    deberta,
    distilbert,
    electra,
    gemma,
    gpt2,
    llama,
    modernbert,
    mpnet,
    phi3,
    roberta,
    t5,
)

FAMILIES: dict[str, ModuleType] = {
    "albert": albert,
    "bart": bart,  # the encoder-decoder (BartModel, BartForConditionalGeneration)
    "bert": bert,
    "camembert": roberta,
    "clip": clip,  # a whole CLIP checkpoint: its text half
    "clip_text_model": clip,
    "deberta": deberta,  # v1: refused with its own message
    "deberta-v2": deberta,
    "distilbert": distilbert,
    "electra": electra,
    "gemma2": gemma,
    "gemma3": gemma,  # multimodal: its text_config's language model
    "gemma3_text": gemma,
    "gpt2": gpt2,
    "llama": llama,
    "mistral": llama,
    "modernbert": modernbert,
    "mpnet": mpnet,
    "phi3": phi3,
    "qwen2": llama,
    "qwen3": llama,
    "roberta": roberta,
    "t5": t5,  # the encoder (T5EncoderModel) or the encoder-decoder (T5Model, T5ForConditionalGeneration)
    "umt5": t5,  # T5's encoder with a bias table per layer
    "xlm-roberta": roberta,
}
