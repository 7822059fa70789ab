"""Tests moved from tests/test_models.py. Its notes:

Tests of saelab.models: offline loading, the hub-offline error, the tiny LM.

HF models here are small random-weight ones built with transformers, so the TransformerLens
conversion is checked against the HF forward pass without the hub. The gemma-3-270m test
(``-m slow``) dequantizes the packaged GGUF, about a minute, unless ``SAELAB_MODELS_DIR``
already holds a prepared ``gemma-3-270m``.
"""
