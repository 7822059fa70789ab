"""saelab: a reproducible Snakemake pipeline for sparse-autoencoder interpretability research."""

__version__ = "0.1.0"
