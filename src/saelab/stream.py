"""Streaming activations: training batches straight from the model's forward pass.

:class:`ActivationStream` turns token contexts into endless training batches of hook activations
without writing a cache. One forward (by an :class:`ActivationProvider`) serves every hook the
group needs, so every SAE of a group sees the same batches, as with the cache.

Order. The training contexts are a fixed list (the corpus without its held-out slice, and without
any context range that must stay unseen, such as a prefix cache's held-out split). They are
forwarded in fixed groups of ``batch_contexts`` contexts (group ``g`` = contexts
``g * batch_contexts ..``), in order; the last group of an epoch may be shorter, and the stream
wraps to the first group (a new epoch) when the list is used up. Special tokens (BOS/EOS/PAD)
are dropped when ``exclude_special``.

Shuffle buffer. Token rows collect in a pool of at least ``buffer_contexts x context_len`` rows;
the pool is permuted with a seeded numpy generator, its first half (whole batches, at least one)
is emitted batch by batch, and the rest stays to be mixed with the next groups. A batch thus
draws tokens from many contexts (SAE-Lens' mixing buffer, seeded).

Position. :meth:`ActivationStream.position` is a small, JSON-able record: epoch, next group,
generator state, the pool's row ids in pool order, the emission cursor. :meth:`seek` restores
it and recomputes the pool's activations by re-running exactly the groups they came from; on
CPU with the same thread count a forward of the same batch is bitwise the same, so a resumed run
trains on bitwise the same batches (tested with a real SIGKILL).

Held-out. :meth:`ActivationStream.heldout_batches` forwards the held-out slice (the last
``heldout_fraction`` of the contexts, the split rule of the cache's reader) in order; no held-out
context is ever in the training list (checked at construction).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from saelab.cache import heldout_split, rows_of_contexts, split_rows
from saelab.stream_providers import ActivationProvider, ModelProvider

log = logging.getLogger("saelab.stream")


class StreamError(ValueError):
    """A stream that cannot be built as asked, with what to change."""


def training_contexts(
    n_contexts: int, heldout_fraction: float, exclude: Sequence[tuple[int, int]] = ()
) -> tuple[np.ndarray, range]:
    """(training context ids, held-out contexts): the held-out slice is the last
    ``heldout_fraction`` of the contexts (:func:`saelab.cache.heldout_split`), and every
    ``[start, stop)`` range in ``exclude`` is left out of training too."""
    n_train = heldout_split(n_contexts, heldout_fraction)
    keep = np.ones(n_train, dtype=bool)
    for start, stop in exclude:
        keep[max(start, 0) : max(min(stop, n_train), 0)] = False
    return np.flatnonzero(keep).astype(np.int64), range(n_train, n_contexts)


class ActivationStream:
    """Endless shuffled training batches from a forward pass, with a resumable position.

    ``provider`` computes the activations of context ids; ``special_mask`` [n_contexts, ctx]
    marks the tokens left out when ``exclude_special``. Yields a tuple of tensors, one per hook
    of ``hooks``, each ``[batch_size, width]`` in ``dtype``.
    """

    def __init__(
        self,
        provider: ActivationProvider,
        special_mask: np.ndarray,
        hooks: list[str],
        batch_size: int,
        *,
        buffer_contexts: int = 64,
        batch_contexts: int = 16,
        seed: int = 0,
        heldout_fraction: float = 0.05,
        exclude: Sequence[tuple[int, int]] = (),
        exclude_special: bool = True,
        dtype: torch.dtype = torch.float32,
        identity: dict[str, Any] | None = None,
    ):
        if special_mask.ndim != 2:
            raise StreamError(
                f"special_mask must be [n_contexts, context_len], got {special_mask.shape}"
            )
        if not 0 < heldout_fraction < 1:
            raise StreamError(f"heldout_fraction {heldout_fraction} must be in (0, 1)")
        for name, value in (("batch_size", batch_size), ("buffer_contexts", buffer_contexts),
                            ("batch_contexts", batch_contexts)):  # fmt: skip
            if int(value) < 1:
                raise StreamError(f"{name} must be >= 1, got {value}")
        self.provider = provider
        self.special = special_mask.astype(bool)
        self.n_contexts, self.ctx = special_mask.shape
        self.hooks = list(hooks)
        self.batch_size = int(batch_size)
        self.buffer_contexts = int(buffer_contexts)
        self.batch_contexts = int(batch_contexts)
        self.seed = int(seed)
        self.exclude_special = exclude_special
        self.dtype = dtype
        self.train_ids, self.heldout_ids = training_contexts(
            self.n_contexts, heldout_fraction, list(exclude)
        )
        if len(self.train_ids) == 0:
            raise StreamError(
                f"no training contexts: {self.n_contexts} contexts, {len(self.heldout_ids)} "
                f"held out, ranges {list(exclude)} excluded; use a larger corpus"
            )
        self.capacity = self.buffer_contexts * self.ctx
        if self.capacity < 2 * self.batch_size:
            raise StreamError(
                f"training.shuffle_contexts = {buffer_contexts} contexts of {self.ctx} tokens "
                f"hold {self.capacity} tokens, fewer than two batches of {batch_size}; raise it "
                f"to at least {-(-2 * batch_size // self.ctx)}"
            )
        self.n_groups = -(-len(self.train_ids) // self.batch_contexts)
        self.identity = {
            **(identity or {}),
            "hooks": self.hooks,
            "n_contexts": self.n_contexts,
            "context_len": self.ctx,
            "train_contexts": _digest(self.train_ids),
            "batch_contexts": self.batch_contexts,
            "buffer_contexts": self.buffer_contexts,
            "exclude_special": exclude_special,
        }
        self.widths: dict[str, int] = {}
        self._reset()

    # ---------------------------------------------------------------- state
    def _reset(self) -> None:
        self.total_batches: int | None = None
        self.emitted = 0
        self.epoch = 0
        self.next_group = 0
        self.rng = np.random.default_rng(self.seed)
        self.rows = np.empty(0, dtype=np.int64)
        self.acts: list[torch.Tensor] | None = None
        self.cursor = 0
        self.emit_end = 0

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.identity, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def position(self) -> dict[str, Any]:
        """Everything that determines the batches still to come (JSON-able)."""
        return {
            "epoch": self.epoch,
            "next_group": self.next_group,
            "rng": self.rng.bit_generator.state,
            "rows": self.rows.tolist(),
            "cursor": self.cursor,
            "emit_end": self.emit_end,
            "emitted": self.emitted,
        }

    def seek(self, epoch: int, next_group: int, rng: dict, rows: list[int], cursor: int,
             emit_end: int, emitted: int = 0) -> None:  # fmt: skip
        """Restore a :meth:`position`: the pool's activations are recomputed from the groups
        they came from (the same forwards as the first time)."""
        self.epoch, self.next_group = int(epoch), int(next_group)
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = rng
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cursor, self.emit_end, self.emitted = int(cursor), int(emit_end), int(emitted)
        self.acts = self._recompute(self.rows)

    def set_total(self, batches: int) -> None:
        """Batches the run will take: the last refills forward only the tokens still needed
        (and emit every whole batch of the pool) instead of topping the pool up to its size."""
        self.total_batches = int(batches)

    def _recompute(self, rows: np.ndarray) -> list[torch.Tensor] | None:
        if len(rows) == 0:
            return None
        contexts = np.unique(split_rows(rows, self.ctx)[0])
        index = np.searchsorted(self.train_ids, contexts)  # train_ids is sorted
        known = index < len(self.train_ids)
        known[known] = self.train_ids[index[known]] == contexts[known]
        if not known.all():
            raise StreamError(
                f"cannot resume: contexts {contexts[~known][:5].tolist()} of the checkpoint are "
                "not training contexts of this stream (was the corpus or heldout_fraction "
                "changed?)"
            )
        groups = np.unique(index // self.batch_contexts).tolist()
        found_rows, found_acts = [], []
        for g in groups:
            r, a = self._forward_group(g)
            found_rows.append(r)
            found_acts.append(a)
        all_rows = np.concatenate(found_rows)
        index = np.argsort(all_rows)
        where = index[np.searchsorted(all_rows, rows, sorter=index)]
        if not np.array_equal(all_rows[where], rows):
            raise StreamError("cannot resume: the checkpoint's buffer rows are not in the corpus")
        take = torch.from_numpy(where)
        return [torch.cat([a[j] for a in found_acts])[take] for j in range(len(self.hooks))]

    # ---------------------------------------------------------------- forward and mixing
    def _forward_group(self, group: int) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Row ids and activations (special tokens dropped) of one fixed group of contexts."""
        contexts = self.train_ids[group * self.batch_contexts : (group + 1) * self.batch_contexts]
        return self._forward(contexts)

    def _forward(self, contexts: np.ndarray) -> tuple[np.ndarray, list[torch.Tensor]]:
        acts = self.provider(contexts)
        rows = rows_of_contexts(contexts, self.ctx)
        keep = ~self.special[contexts].reshape(-1) if self.exclude_special else None
        out = []
        for hook in self.hooks:
            if hook not in acts:
                raise StreamError(f"the activation provider returned no {hook!r}")
            value = acts[hook].reshape(len(rows), -1)
            self.widths.setdefault(hook, int(value.shape[1]))
            if keep is not None:
                value = value[torch.from_numpy(keep)]
            out.append(value.to("cpu", self.dtype))
        return (rows[keep] if keep is not None else rows), out

    def _refill(self) -> None:
        rows = [self.rows[self.cursor :]]
        acts: list[list[torch.Tensor]] | None = (
            [[a[self.cursor :]] for a in self.acts] if self.acts is not None else None
        )
        n = len(rows[0])
        target = self.capacity
        if self.total_batches is not None:
            target = min(target, (self.total_batches - self.emitted) * self.batch_size)
        while n < max(target, self.batch_size):
            r, a = self._forward_group(self.next_group)
            self.next_group += 1
            if self.next_group == self.n_groups:
                self.next_group, self.epoch = 0, self.epoch + 1
                log.warning(
                    "the stream used all %d training contexts and starts epoch %d over them; "
                    "a larger corpus (corpora.<name>.n_tokens) gives fresh tokens instead",
                    len(self.train_ids), self.epoch,
                )  # fmt: skip
            rows.append(r)
            acts = [[] for _ in self.hooks] if acts is None else acts
            for j, value in enumerate(a):
                acts[j].append(value)
            n += len(r)
        perm = self.rng.permutation(n)
        self.rows = np.concatenate(rows)[perm]
        take = torch.from_numpy(perm)
        # Set: by the leftover of the last buffer, or else by the loop's forwards.
        self.acts = [torch.cat(parts)[take] for parts in cast(list[list[torch.Tensor]], acts)]
        if target < self.capacity:  # the end of the run: every whole batch left
            self.emit_end = n // self.batch_size * self.batch_size
        else:
            self.emit_end = max(self.batch_size, n // 2 // self.batch_size * self.batch_size)
        self.cursor = 0

    def probe_widths(self) -> dict[str, int]:
        """Each hook's width, from a forward of the first training group (not consumed)."""
        if not self.widths:
            self._forward(self.train_ids[: min(self.batch_contexts, 1)])
        return {h: self.widths[h] for h in self.hooks}

    def __iter__(self) -> ActivationStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        return self.next_with_rows()[0]

    def next_with_rows(self) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
        """The next batch and its global row ids (``saelab.cache.split_rows`` gives the contexts)."""
        if self.acts is None or self.cursor + self.batch_size > self.emit_end:
            self._refill()
        span = slice(self.cursor, self.cursor + self.batch_size)
        self.cursor += self.batch_size
        self.emitted += 1
        acts = cast(list[torch.Tensor], self.acts)  # _refill has set it
        return tuple(a[span] for a in acts), self.rows[span]

    # ---------------------------------------------------------------- held-out
    def heldout_batches(self, max_tokens: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """The held-out slice in order (never shuffled, never trained on), ``batch_size`` rows
        per batch (the last may be smaller), up to ``max_tokens`` tokens."""
        ids = np.asarray(self.heldout_ids, dtype=np.int64)
        pending: list[list[torch.Tensor]] = [[] for _ in self.hooks]
        n_pending, n_done = 0, 0
        for first in range(0, len(ids), self.batch_contexts):
            _, acts = self._forward(ids[first : first + self.batch_contexts])
            for j, value in enumerate(acts):
                pending[j].append(value)
            n_pending += len(acts[0])
            while n_pending >= self.batch_size:
                joined = [torch.cat(p) for p in pending]
                yield tuple(v[: self.batch_size] for v in joined)
                n_done += self.batch_size
                pending = [[v[self.batch_size :]] for v in joined]
                n_pending -= self.batch_size
                if max_tokens is not None and n_done >= max_tokens:
                    return
        if n_pending:
            yield tuple(torch.cat(p) for p in pending)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def model_stream(
    info,
    model_dir: str | Path,
    tokens_path: str | Path,
    hooks: list[str],
    cfg,
    *,
    batch_contexts: int = 16,
    backend: str = "auto",
    device: str = "cpu",
    cache_n_tokens: int | None = None,
    dtype=None,
) -> ActivationStream:
    """The stream of a ``source: stream`` training group: the model ``info`` (prepared in
    ``model_dir``) run over the tokenized corpus at ``tokens_path``, capturing ``hooks``, with
    the shuffle buffer, seed, batch size and held-out fraction of the TrainConfig ``cfg``.

    The group's cache (its first ``cache_n_tokens`` tokens, or the whole corpus) keeps its own
    held-out split unseen too: the analyses read it as held-out data. ``dtype``: the model's
    forward precision (``saelab.precision``; float32 when None); the SAEs see float32.
    """
    import torch

    from saelab.cache import activation_source
    from saelab.data import load_tokens

    store = load_tokens(tokens_path)
    tokens, special = store.corpus.tokens, store.corpus.special_mask
    n_contexts, ctx = tokens.shape
    exclude = []
    if cache_n_tokens is not None and cache_n_tokens // ctx < n_contexts:
        n_cache = cache_n_tokens // ctx
        exclude.append((heldout_split(n_cache, cfg.heldout_fraction), n_cache))
    dtype = torch.float32 if dtype is None else dtype
    source = activation_source(info, model_dir, hooks, device, backend, dtype)
    identity = {
        "model": info.model_id,
        "forward_dtype": str(dtype).removeprefix("torch."),
        "backend": source.backend,
        "corpus": store.attrs.get("corpus"),
        "corpus_fingerprint": store.corpus.fingerprint,
        "bos": store.attrs.get("bos"),
        "source": "stream",
    }
    return ActivationStream(
        ModelProvider(source, tokens, device), special, hooks, cfg.batch_size,
        buffer_contexts=cfg.shuffle_contexts, batch_contexts=batch_contexts, seed=cfg.seed,
        heldout_fraction=cfg.heldout_fraction, exclude=exclude,
        exclude_special=cfg.exclude_special, identity=identity,
    )  # fmt: skip
