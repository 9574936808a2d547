"""What the explorer's neurons do to the prediction, computed once per explanation, lazily.

After an explanation is shown, the worker thread runs :func:`fastloc_viz.ablate` on it (one
batched forward pass, no backward pass) and, for ``k <= MAX_SUBSET_K``, the explained class
with every other subset of the k channels zeroed (one more batched forward pass of at most
``2**k - k - 2`` copies). After that, unticking any neurons shows what the model predicts
without them from these numbers: a toggle never runs a pass. No ipywidgets here.
"""

from __future__ import annotations

import html
import itertools
import threading
from collections.abc import Sequence

from ..core.results import Explanation
from ..neurons.ablation import Ablation, Outcome, ablate, ablate_channels

MAX_SUBSET_K = 6
"""Up to this k every subset is computed with the ablation (64 copies at k = 6)."""


class Effects:
    """The ablation of one explanation and its subsets; thread-safe, one explanation at a time."""

    def __init__(self, bundle) -> None:
        self.bundle = bundle
        self._lock = threading.Lock()
        self.base: Explanation | None = None
        self.ablation: Ablation | None = None
        self.subsets: dict[frozenset[int], Outcome] = {}
        self.error: BaseException | None = None

    def ready(self, base: Explanation) -> bool:
        """Whether the numbers for ``base`` are known (or failed: ``error``)."""
        with self._lock:
            return self.base is base and (self.ablation is not None or self.error is not None)

    def compute(self, base: Explanation) -> Ablation:
        """Ablate ``base`` (and its subsets); raises what :func:`ablate` raises (kept in ``error``)."""
        with self._lock:
            if self.base is base and self.ablation is not None:
                return self.ablation
        try:
            a = ablate(self.bundle, base)
            subsets: dict[frozenset[int], Outcome] = {frozenset(): a.base, frozenset(a.ranks): a.all_off}
            subsets.update({frozenset({r}): o for r, o in zip(a.ranks, a.channel_off)})
            k = len(a.ranks)
            if k <= MAX_SUBSET_K:
                rest = [
                    frozenset(c) for m in range(2, k) for c in itertools.combinations(a.ranks, m)
                ]
                chans = dict(zip(a.ranks, a.channels))
                outs = ablate_channels(self.bundle, base, [[chans[r] for r in sorted(s)] for s in rest])
                subsets.update(zip(rest, outs))
        except Exception as err:
            with self._lock:
                self.base, self.ablation, self.subsets, self.error = base, None, {}, err
            raise
        with self._lock:
            self.base, self.ablation, self.subsets, self.error = base, a, subsets, None
        return a

    def for_base(self, base: Explanation) -> Ablation | None:
        with self._lock:
            return self.ablation if self.base is base else None

    def without(self, base: Explanation, enabled: Sequence[int]) -> Outcome | None:
        """The outcome with the neurons not in ``enabled`` zeroed, when known."""
        with self._lock:
            if self.base is not base or self.ablation is None:
                return None
            off = frozenset(self.ablation.ranks) - set(enabled)
            return self.subsets.get(off)


def without_html(base: Explanation, ablation: Ablation | None, enabled: Sequence[int], outcome: Outcome | None) -> str:
    """The line under the cards: what the model predicts without the unticked neurons."""
    if ablation is None:
        return "<span class='flv-muted'>computing what each neuron does to the prediction…</span>"
    off = [r for r in ablation.ranks if r not in set(enabled)]
    name = html.escape(ablation.target_name)
    if not off:
        return (
            f"<span class='flv-without'>p({name}) = {ablation.base.probability:.1%}. Untick neurons to see "
            f"what the model predicts with their channels zeroed (all {len(ablation.ranks)}: "
            f"{ablation.all_off.probability:.1%}).</span>"
        )
    chans = dict(zip(ablation.ranks, ablation.channels))
    which = ", ".join(f"#{r}" for r in off)
    zeroed = ", ".join(str(chans[r]) for r in off)
    if outcome is None:
        return (
            f"<span class='flv-without'>Without {which}: not computed for this subset (every subset "
            f"is only for k ≤ {MAX_SUBSET_K}; single neurons and all {len(ablation.ranks)} are).</span>"
        )
    top = outcome.top
    return (
        f"<span class='flv-without'>Without {which} (channel{'s' if len(off) > 1 else ''} {zeroed} zeroed) "
        f"the model predicts <b>{html.escape(top.name)}</b> ({top.probability:.1%}); "
        f"p({name}) {ablation.base.probability:.1%} → {outcome.probability:.1%}.</span>"
    )
