"""Typed, frozen views of the config sections, one field per key of ``config/schema.yaml``.

The schema holds every default and every field's documentation (the docstrings below are its
``description`` texts); these classes hold no defaults of their own. :meth:`Section.from_dict`
builds a section from the schema-validated config (defaults filled), so the fields are exactly
the schema's keys (``tests/test_config.py`` checks that they stay so). Read as a mapping
(``section["key"]``, ``section.get``, ``dict(section)``), a section gives the validated plain
data, nested sections as dicts, as the rule files and scripts read it; read as attributes, it
is typed. A leaf module: it imports nothing of saelab but the runtime helper.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from saelab.runtime import dataclass_from_dict


@dataclass(frozen=True, eq=False)
class Section(Mapping[str, Any]):
    """Base of the typed sections: built from validated dicts, readable as one."""

    NESTED: ClassVar[dict[str, type[Section]]] = {}
    """Keys whose value is itself a section (an object with properties in the schema)."""
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    """Keys the schema gives no default (absent = off): None when absent, and left out of the
    mapping view, as of the validated dict."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], key: str, error: type[Exception] = ValueError):
        """The section of the validated dict ``data`` at config key ``key``; an unknown or a
        missing key is an ``error`` naming it (the schema fills every default, so a missing key
        means the dict was not validated)."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data and name not in cls.OPTIONAL]
        if missing:
            raise error(f"{key}: missing key(s) {missing}; validate the config against the schema")
        values = {
            name: (cls.NESTED[name].from_dict(value, f"{key}.{name}", error)
                   if name in cls.NESTED and value is not None else value)
            for name, value in data.items()
        }  # fmt: skip
        values.update({name: None for name in cls.OPTIONAL if name not in data})
        section = dataclass_from_dict(cls, values, key, error)
        object.__setattr__(section, "_order", tuple(data))  # the mapping view keeps it
        return section

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return _plain(getattr(self, key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        """The keys in the order of the dict the section was built from (the config file's
        keys, then the schema's defaults), so the mapping view is that dict, order included."""
        order = getattr(self, "_order", None)
        return order if order is not None else tuple(f.name for f in fields(self))


def _plain(value: Any) -> Any:
    """``value`` as the validated config holds it: sections as dicts, lists copied."""
    if isinstance(value, Section):
        return {name: _plain(getattr(value, name)) for name in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    return value


@dataclass(frozen=True, eq=False)
class TrainingSection(Section):
    """Training settings shared by every SAE (saelab.train.TrainConfig); an SAE may override any of
    them under its own `train:` key."""

    n_tokens: int
    """Training tokens per SAE; steps = n_tokens // batch_size (epochs repeat as needed)."""
    batch_size: int
    """Tokens per optimiser step (Bart and the official code: 4096 / 2048)."""
    lr: float | None
    """Adam learning rate; null = dictionary_learning's 2e-4 / sqrt(width / 2^14), per SAE."""
    betas: list[float]
    """Adam betas: (0.9, 0.999) official; Bart used (0.9, 0.99)."""
    warmup_steps: int
    """Linear warmup from 0 (as dictionary_learning: the first step has lr 0); Bart 0, official
    1000."""
    decay_start: float | None
    """Fraction of training after which lr decays linearly to 0 at the last step; null = no decay
    (Bart)."""
    clip_grad_norm: float
    """Maximum global gradient norm per SAE (official 1.0; Bart 1e5, i.e. none)."""
    checkpoint_every: int
    """Steps between checkpoints."""
    log_every: int
    """Steps between lines of train_log.jsonl (means over the window) and bar updates; also how
    often a non-finite loss is looked for."""
    seed: int
    """Seed of the reader's shuffle and of torch's RNG (SAE init uses the SAE's own seed)."""
    heldout_fraction: float
    """Last fraction of the cache's contexts, never trained on, used for the final evaluation."""
    exclude_special: bool
    """Leave BOS/EOS/PAD tokens out of training and evaluation."""
    buffer_chunks: int
    """Cache chunks shuffled together (memory - buffer_chunks x chunk rows x hook widths)."""
    eval_tokens: int | None
    """Cap on the held-out tokens of the metrics written after training."""
    dead_window_fraction: float | None
    """The dead window follows the run: each SAE's dead_after_tokens is lowered to this fraction of
    the run's tokens when that is shorter (at least one batch), so AuxK engages in short runs.
    null keeps dead_after_tokens."""
    dead_tokens: int
    """metrics.json dead_fraction: latents that fire (eval mode) on none of this many tokens, the
    held-out split first, topped up from the training split."""
    k_anneal_fraction: float | None
    """k-annealing: over this first fraction of the steps the training k of TopK-style SAEs falls
    linearly from k_anneal_start x k to k. null - no annealing."""
    k_anneal_start: float
    """Start of the k-annealing as a multiple of k (capped at the width)."""
    source: str
    """cache = batches from the group's zarr cache; stream = straight from the model's forward over
    the cache's tokenized corpus (no cache written for training; one forward serves every hook
    and SAE of the group; the corpus' last heldout_fraction and the cache's held-out split are
    never trained on)."""
    shuffle_contexts: int
    """source stream only: contexts in the seeded shuffle buffer that mixes tokens across contexts
    (memory up to 2 x shuffle_contexts x context_len x the hooks' widths x 4 bytes)."""


@dataclass(frozen=True, eq=False)
class EvaluationSection(Section):
    """The Evaluation settings."""

    fvu: str
    """Definition of the headline fvu of metrics.json (saelab.evaluate)."""
    n_tokens: int
    """Held-out tokens for FVU, L0 and dead latents."""
    ce_contexts: int
    """Held-out contexts for CE recovered and KL (0 skips them); 33 x 126 predictions = 4,158 (>=
    4,096) at ctx 128 with BOS per context. The 262k unembedding of gemma-3 makes these costly:
    ce_contexts x ce_context_len x (1 clean + 2 per hook + 2 per SAE) tokens through the blocks
    after the hook."""
    ce_context_len: int
    """Tokens per context of the CE evaluation."""
    batch_size: int
    """Tokens per evaluation batch."""
    ce_batch_size: int
    """Contexts per model forward in the CE evaluation."""
    splice_special: bool
    """BOS convention of the headline CE numbers: true = `splice` (replace BOS and other special
    positions too, SAEBench's core eval; saelab's default), false = `clean` (keep them clean,
    SAE-Lens's get_recons_loss). Ablations replace every position in both."""
    ce_both_conventions: bool
    """Also report CE recovered and KL under the other BOS convention (`other_convention` in the
    evaluation JSON): one more spliced pass per SAE."""
    bootstrap_resamples: int
    """Resamples of the percentile bootstrap over contexts behind every CE / KL interval (also Fig
    9's, saelab.stats)."""
    bootstrap_seed: int
    """Seed of those bootstrap resamples."""
    seed001: bool
    """Seed 001's absorption, splitting, monosemanticity and hierarchy metrics."""
    absorption: bool
    """SAEBench-style first-letter absorption (when the tokenizer allows)."""
    absorption_split: str
    """Cache split the absorption metric reads: all, train or heldout."""


@dataclass(frozen=True, eq=False)
class CooccurrenceFeatures(Section):
    """Per-latent summaries (rule feature_summary; also read by the trajectory analysis)."""

    n_tokens: int
    """Cache rows read (rounded up to whole contexts)."""
    top_n: int
    """Top activations kept per latent."""
    before: int
    """Context tokens shown before a top token."""
    after: int
    """Context tokens shown after a top token."""
    n_bins: int
    """Bins of each latent's activation histogram."""
    batch_size: int
    """Tokens per encoded batch."""
    split: str
    """Cache split read, in cache order."""


@dataclass(frozen=True, eq=False)
class CooccurrenceRepresentative(Section):
    """The subgraph analysed by PCA and the feature pages (the original's subgraph 26 at tau 10)."""

    sae: str | None
    """SAE whose subgraph is shown; null = the first Matryoshka SAE of `saes`."""
    threshold: float | None
    """Activation threshold tau of that subgraph; null = the first of `thresholds`."""
    subgraph: int | str
    """A subgraph id, or auto = among non-giant subgraphs with size in size_range, the one whose
    latents fire most."""
    size_range: list[int]
    """Sizes considered by subgraph auto."""


@dataclass(frozen=True, eq=False)
class CooccurrencePca(Section):
    """PCA of the representative subgraph's activations (rule subgraph_pca)."""

    max_examples: int
    """Tokens firing the subgraph kept for PCA (the original's 500)."""
    max_tokens: int
    """Cache rows scanned at most to find them."""
    all_in_size_range: list[int] | None
    """[min, max]: also analyse every subgraph with size in this range (rule subgraph_pca_all, a
    folder of PNG and HTML); null = only the representative."""


@dataclass(frozen=True, eq=False)
class CooccurrenceDashboards(Section):
    """Per-latent HTML pages of the representative subgraph (rule feature_dashboards)."""

    max_latents: int
    """Pages written at most (the subgraph's most frequent latents first)."""
    n_logits: int
    """Promoted and suppressed tokens listed per latent."""


@dataclass(frozen=True, eq=False)
class CooccurrenceSection(Section):
    """Co-occurrence of Matryoshka latents (saelab.cooccurrence; methods §2). Empty `saes` turns the
    analysis off."""

    NESTED: ClassVar[dict[str, type[Section]]] = {
        "features": CooccurrenceFeatures,
        "representative": CooccurrenceRepresentative,
        "pca": CooccurrencePca,
        "dashboards": CooccurrenceDashboards,
    }

    saes: list[str]
    """Named SAEs to compare, of one width; at least one Matryoshka SAE, whose group sizes give the
    others their "pretend" groups."""
    n_tokens: int
    """Non-special tokens of the cache counted (the original used 50 x 4096 = 204800)."""
    split: str
    """Split of the SAE's cache to read, in cache order."""
    batch_size: int
    """Tokens per encoded batch (train_batchtopk selects k x batch_size entries per batch)."""
    encoding: str
    """eval = the SAE's threshold inference; train_batchtopk = BatchTopK over each batch as in
    training, the original's unintended encoding (methods §2.2 caveat 1)."""
    method: str
    """Pair counts from the sparse codes (cost N k^2), the original's dense chunked matmul over the
    latents that fire (N U^2; cheaper for dense codes such as a ReLU SAE's), or auto: the cheaper
    of the two by saelab.cooccurrence.counts.choose_method."""
    thresholds: list[float]
    """Activation thresholds tau; a latent is active when its activation is > tau."""
    component_size: list[int]
    """Bounds on the largest connected component that the edge-threshold bisection aims for."""
    bisection_tolerance: float
    """The bisection on [0, 1] stops when hi - lo is at most this."""
    features: CooccurrenceFeatures
    """Per-latent summaries (rule feature_summary; also read by the trajectory analysis)."""
    representative: CooccurrenceRepresentative
    """The subgraph analysed by PCA and the feature pages (the original's subgraph 26 at tau 10)."""
    pca: CooccurrencePca
    """PCA of the representative subgraph's activations (rule subgraph_pca)."""
    dashboards: CooccurrenceDashboards
    """Per-latent HTML pages of the representative subgraph (rule feature_dashboards)."""


@dataclass(frozen=True, eq=False)
class BudgetSection(Section):
    """Checks made when the DAG is built (saelab.budget), before any job runs."""

    check_disk: bool
    """Stop when the caches still to be written exceed the free space under data/ (the check
    states every cache's bytes and every training group's peak memory either way)."""


@dataclass(frozen=True, eq=False)
class WandbSection(Section):
    """Weights & Biases: one run per training group (every train_log.jsonl record as
    {sae}/{metric}) and one per SAE evaluation. Absent = off."""

    project: str
    """W&B project."""
    entity: str | None
    """W&B entity (team or user); null = the default entity."""
    mode: str
    """offline needs no network and writes under dir (wandb sync uploads it later)."""
    dir: str
    """Where W&B writes its run files."""


@dataclass(frozen=True, eq=False)
class TrackingSection(Section):
    """Optional run tracking (saelab.tracking); off by default."""

    NESTED: ClassVar[dict[str, type[Section]]] = {"wandb": WandbSection}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"wandb"})

    wandb: WandbSection | None
    """Weights & Biases: one run per training group (every train_log.jsonl record as
    {sae}/{metric}) and one per SAE evaluation. Absent (None) = off."""


@dataclass(frozen=True, eq=False)
class ToySection(Section):
    """The Matryoshka paper's toy model of feature hierarchy (saelab.toy; rule toy_absorption):
    the toy's ground truth (saelab.toy.HierarchyConfig) and the architectures, seeds and
    training settings compared on it (saelab.toy.compare_architectures)."""

    n_parents: int
    """Number of parent features."""
    children_per_parent: int
    """Children of each parent; exactly one of them fires whenever the parent fires."""
    n_extra: int
    """Independent features outside the hierarchy (they fire on their own, Bernoulli)."""
    d_model: int
    """Dimension of the toy's activations."""
    parent_prob: float
    """Probability that a given parent fires on a token (parents are independent)."""
    extra_prob: float
    """Probability that a given extra feature fires on a token."""
    child_weights: list[float] | None
    """Relative probabilities of the children given their parent (the same for every parent;
    normalised to sum to 1); null = uniform."""
    parent_magnitude: float
    """Mean magnitude of an active parent."""
    child_magnitude: float
    """Mean magnitude of an active child."""
    extra_magnitude: float
    """Mean magnitude of an active extra feature; below the parents' and children's, so an SAE
    short of L0 budget drops extras first."""
    magnitude_noise: float
    """Relative magnitude jitter: an active feature's value is mean x (1 + U(-noise, noise))."""
    noise_std: float
    """Standard deviation of isotropic Gaussian noise added to every token (0 = none)."""
    orthogonal: bool
    """Ground-truth directions are orthonormal (needs d_model >= the number of features); false
    = independent random unit vectors."""
    seed: int
    """Seeds the ground-truth directions and the default sampling stream."""
    archs: list[str | dict[str, Any]]
    """SAEs compared: architecture names, name:loss pairs (matryoshka:bussmann) or mappings of
    saelab.toy.ArchSpec fields."""
    seeds: list[int]
    """Seeds of each SAE's initialisation and training tokens (every architecture runs with
    each)."""
    width: int | None
    """SAE width; null = the number of ground-truth features."""
    k: int
    """Active latents per token of the TopK-style SAEs."""
    steps: int
    """Training steps (each on fresh toy tokens)."""
    batch_size: int
    """Tokens per training step."""
    lr: float
    """Adam learning rate (constant)."""
    k_start: int | None
    """k-annealing: k starts here and falls linearly to k over the first anneal_fraction of the
    steps; null = no annealing."""
    anneal_fraction: float
    """Fraction of the steps over which k anneals from k_start."""
    loss: str
    """Matryoshka loss variant of the architectures that name none (saelab.saes.matryoshka)."""
    n_eval: int
    """Held-out toy tokens of the absorption measurement."""
    match: str
    """How a feature's latent is found: best cosine with its true direction, or best F1 of
    firing."""
