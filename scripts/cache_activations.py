"""Rule cache_activations: one forward pass per batch writes every configured hook to zarr."""

from saelab.cache import activation_source, build_cache
from saelab.config import CacheConfig
from saelab.data import load_tokens
from saelab.models import configured_device, prepared_model_info
from saelab.precision import model_precision
from saelab.runtime import configure_torch, logged

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    spec = snakemake.params.model
    cache = CacheConfig(**snakemake.params.cache)
    info = prepared_model_info(snakemake.input.model_dir)
    device = configured_device(snakemake.config)
    corpus, corpus_attrs = load_tokens(snakemake.input.tokens)
    tokens, special = corpus.tokens, corpus.special_mask
    if cache.n_tokens is not None:
        n_contexts = cache.n_tokens // tokens.shape[1]
        tokens, special = tokens[:n_contexts], special[:n_contexts]
    precision = model_precision(spec, device, log)
    source = activation_source(
        info, snakemake.input.model_dir, cache.hooks, device, cache.backend, precision.dtype
    )
    log.info("caching %s with the %s backend on %s", cache.hooks, source.backend, device)
    summary = build_cache(
        source,
        tokens,
        special,
        cache.hooks,
        snakemake.output.cache,
        dtype=cache.dtype,
        batch_contexts=cache.batch_contexts,
        device=device,
        manifest={
            "model": info.model_id,
            "tl_name": info.tl_name,
            "model_source": info.source,
            "backend": source.backend,
            "corpus": corpus_attrs["corpus"],
            "corpus_fingerprint": corpus.fingerprint,
            "seed": corpus_attrs["seed"],
            "bos": corpus_attrs["bos"],
            "bos_token_id": corpus_attrs.get("bos_token_id"),
            "precision": precision.record(),
        },
    )
    log.info(
        "cached %d tokens in %.1f s (%.0f tokens/s; resumed from context %d)",
        summary.n_tokens,
        summary.seconds,
        summary.tokens_per_s,
        summary.resumed_from_context,
    )
