"""The peer methods (strategies/infobatch.py, strategies/composer_sb.py): InfoBatch and Composer's SelectiveBackprop.

Unit tests drive a strategy's epochs on a synthetic 1×8×8 dataset with a tiny linear model; the
end-to-end tests train through the real trainer on the real Fashion-MNIST 512-example subset
(tiny_config: batch 64). Statistical checks are seeded and use a 1e-6 significance floor.
"""

from __future__ import annotations

import dataclasses
import json
import itertools

import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

from conftest import compose_config, run_tiny
from selective_backprop.sources.source import TorchSource
from selective_backprop.strategies import Context, Counters, build_strategy
from selective_backprop.strategies.composer_sb import ComposerSB, composer_rank_probabilities, should_select
from selective_backprop.strategies.infobatch import InfoBatch
from selective_backprop.timing import PhaseTimer
from selective_backprop.errors import ConfigError
from selective_backprop.validate import validate_config
from datagen import SyntheticImages

CPU = torch.device("cpu")
N, B = 512, 64          # tiny_config's subset and batch size




class _Pooled(nn.Module):
    """Linear on a 4×4 average pool: any spatial size works; records the input sizes it sees."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16, 4)
        self.sizes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        return self.fc(self.pool(x).flatten(1))


def _context(data, batch_size, max_epochs=10, model=None) -> Context:
    timer = PhaseTimer(CPU)
    source = TorchSource(data, CPU, seed=0, timer=timer)
    if model is None:
        torch.manual_seed(0)
        model = _Pooled()
    return Context(model, source, timer, Counters(), batch_size, CPU, extras={"max_epochs": max_epochs})


def _epoch(strategy, epoch, ctx):
    return list(strategy.epoch(epoch, ctx))


# ------------------------------------------------------------------------------ InfoBatch

def _scored_infobatch(n=400, b=16, seed=0, **kw):
    """An InfoBatch whose score table holds fixed scores (uniform [0, 1), seeded)."""
    data = SyntheticImages(n)
    ctx = _context(data, b, max_epochs=100)
    ib = InfoBatch(batch_size=b, seed=seed, **kw)
    ib.scores = torch.rand(n, generator=torch.Generator().manual_seed(7))
    return data, ctx, ib


def test_infobatch_prunes_r_of_below_mean_uniformly_and_rescales_exactly_the_kept_ones():
    """Each epoch: exactly n_below − int((1−r)·n_below) below-mean examples are left out, every
    other example is trained once; kept below-mean ones weigh 1/(1−r), all others 1.

    Which below-mean examples are pruned does not depend on their score: over 40 epochs the 60
    lowest-scoring examples are pruned at the overall rate (binomial test, p > 1e-6), as are
    the below-mean examples just under the mean.
    """
    r = 0.3
    data, ctx, ib = _scored_infobatch(prune_ratio=r)
    below = ib.scores < ib.scores.mean()
    n_below = int(below.sum())
    n_pruned = n_below - int((1 - r) * n_below)
    pruned_count = torch.zeros(len(data), dtype=torch.long)
    for epoch in range(40):
        batches = _epoch(ib, epoch, ctx)
        idx = torch.cat([b.idx for b in batches])
        weight = torch.cat([b.weight for b in batches])
        assert [b.x.shape[0] for b in batches[:-1]] == [16] * (len(batches) - 1)
        assert idx.unique().shape[0] == idx.shape[0] == len(data) - n_pruned
        assert ib.last_epoch == {"below_mean": n_below, "pruned": n_pruned, "kept": len(data) - n_pruned}
        assert (~below[idx] | (weight == 1 / (1 - r))).all()                 # kept below-mean: 1/(1−r)
        assert (weight[~below[idx]] == 1.0).all()                           # the rest: 1
        assert torch.equal(idx, ctx.source.permutation(epoch)[torch.isin(ctx.source.permutation(epoch), idx)])
        missing = torch.ones(len(data), dtype=torch.bool)
        missing[idx] = False
        assert below[missing].all()                                          # only below-mean pruned
        pruned_count += missing
    rate = n_pruned / n_below
    order = torch.argsort(ib.scores)
    lowest, highest_below = order[:60], order[n_below - 60:n_below]
    for group in (lowest, highest_below):
        hits = int(pruned_count[group].sum())
        assert stats.binomtest(hits, 60 * 40, rate).pvalue > 1e-6
    assert pruned_count[~below].sum() == 0
    assert ctx.counters.considered == 40 * len(data) and int(ctx.counters.kept) == 40 * (len(data) - n_pruned)
    assert ctx.counters.select_forwarded == 0


def test_infobatch_unseen_examples_are_never_pruned_and_the_mean_is_over_seen_ones():
    """Scores: NaN (unseen) for 100 examples, 1.0 for 150 and 3.0 for 150 → mean 2 over the seen:
    the 1.0 ones are below it; unseen ones always train with weight 1."""
    data = SyntheticImages(400)
    ctx = _context(data, 32, max_epochs=100)
    ib = InfoBatch(batch_size=32, seed=1)
    ib.scores = torch.cat([torch.full((100,), float("nan")), torch.ones(150), torch.full((150,), 3.0)])
    for epoch in range(5):
        batches = _epoch(ib, epoch, ctx)
        idx = torch.cat([b.idx for b in batches])
        weight = torch.cat([b.weight for b in batches])
        assert ib.last_epoch["below_mean"] == 150 and ib.last_epoch["pruned"] == 75
        assert torch.isin(torch.arange(100), idx).all() and torch.isin(torch.arange(250, 400), idx).all()
        assert (weight[idx < 100] == 1.0).all() and (weight[(idx >= 100) & (idx < 250)] == 2.0).all()


def test_infobatch_first_epoch_trains_everything_and_scores_come_from_training_losses():
    data = SyntheticImages(100)
    ctx = _context(data, 16, max_epochs=10)
    ib = InfoBatch(batch_size=16, seed=0)
    batches = _epoch(ib, 0, ctx)
    assert torch.equal(torch.cat([b.idx for b in batches]), ctx.source.permutation(0))
    assert ib.last_epoch["pruned"] == 0
    assert torch.isnan(ib.scores).all()
    ib.after_train_step(batches[0], torch.arange(16, dtype=torch.float32), torch.zeros(16, 4))
    assert torch.equal(ib.scores[batches[0].idx], torch.arange(16, dtype=torch.float32))
    assert int((~torch.isnan(ib.scores)).sum()) == 16


class _OriginalCounter:
    """InfoBatch's epoch counter, ported from infobatch/infobatch.py (IBSampler.__init__/reset/__iter__,
    InfoBatch.prune/no_prune/reset_weights): per epoch, does it prune, and do the weights it trains
    with still hold 1/keep_ratio values? Scores start at 3 for every example, so nothing is below
    the mean (nothing kept with a weight) until an epoch has trained."""

    def __init__(self, num_epochs: int, delta: float = 0.875):
        self.stop_prune = num_epochs * delta
        self.iterations = 0
        self.scored = False              # any training losses in the score table yet?
        self.boosted = False             # any weight == 1/keep_ratio?
        self.pruning = False
        self.reset()                     # IBSampler.__init__ calls reset() once

    def reset(self):
        if self.iterations > self.stop_prune:
            if self.iterations == self.stop_prune + 1:
                self.boosted = False     # reset_weights()
            self.pruning = False         # no_prune(): weights untouched
        else:
            self.boosted = self.scored   # prune(): reset_weights(), then 1/keep_ratio on the kept below-mean
            self.pruning = True
        self.iterations += 1

    def epoch(self) -> tuple[bool, bool]:
        """The DataLoader's iter(sampler) -> IBSampler.__iter__ -> reset(); then the epoch trains."""
        self.reset()
        self.scored = True
        return self.pruning, self.boosted


@pytest.mark.parametrize("max_epochs,n_pruning,boosted_tail", [(8, 7, False), (10, 8, True), (30, 26, True)])
def test_infobatch_schedule_follows_the_original_counter(max_epochs, n_pruning, boosted_tail):
    """Pruned epochs, tail length and tail weights as InfoBatch's own counter: 8 epochs (8·0.875 = 7):
    epochs 0-6 prune, 1 full epoch with weight 1; 10 (8.75): 0-7 prune, a 2-epoch tail; 30 (26.25):
    0-25 prune, a 4-epoch tail. When max_epochs·delta is fractional the weights are never reset: the
    tail trains every example, the last pruning epoch's kept below-mean ones with weight 2 = 1/(1-r)."""
    n = 200
    data = SyntheticImages(n)
    ctx = _context(data, 32, max_epochs=max_epochs)
    ib = InfoBatch(batch_size=32, seed=0)
    original = _OriginalCounter(max_epochs)
    fake_loss = torch.rand(n, generator=torch.Generator().manual_seed(3))
    last_pruned_weights = None
    kinds = []
    for epoch in range(max_epochs):
        pruning, boosted = original.epoch()
        batches = _epoch(ib, epoch, ctx)
        idx = torch.cat([b.idx for b in batches])
        weights = torch.ones(n)
        if batches[0].weight is not None:
            weights[idx] = torch.cat([b.weight for b in batches])
        assert ib.prunes(epoch, max_epochs) == pruning
        assert all(b.tag == ("pruned" if pruning else "full") for b in batches)
        assert bool((weights != 1).any()) == boosted
        if pruning:
            last_pruned_weights = weights
        else:
            assert torch.equal(idx.sort().values, torch.arange(n))        # the tail trains every example
            assert torch.equal(weights, last_pruned_weights if boosted else torch.ones(n))
            assert all(b.weight is not None for b in batches) == boosted
        kinds.append("prune" if pruning else ("tail_weighted" if boosted else "tail"))
        for b in batches:
            ib.after_train_step(b, fake_loss[b.idx], torch.zeros(b.x.shape[0], 4))
    tail = max_epochs - n_pruning
    assert kinds == ["prune"] * n_pruning + (["tail_weighted"] * tail if boosted_tail else ["tail"] * tail)
    if boosted_tail:
        assert set(last_pruned_weights.unique().tolist()) == {1.0, 2.0}


@pytest.mark.parametrize("max_epochs,delta,pruning", [
    (8, 0.75, [True] * 6 + [False] * 2),
    (8, 1.0, [True] * 8),
    (8, 0.0, [False] * 8),
    (4, 0.5, [True] * 2 + [False] * 2),
])
def test_infobatch_delta_sets_the_pruning_share(max_epochs, delta, pruning):
    ib = InfoBatch(batch_size=32, seed=0, delta=delta)
    assert [ib.prunes(e, max_epochs) for e in range(max_epochs)] == pruning
    assert InfoBatch(32, 0, anneal=1 - delta).delta == delta                 # the deprecated alias


def _trained_infobatch(n: int, seed: int, loss_seed: int, epochs: int, grow: bool = False):
    """An InfoBatch (b = 32, 10-epoch schedule) fed seeded stand-in losses for ``epochs`` epochs (times
    epoch + 1 with ``grow``); returns it with its context."""
    ctx = _context(SyntheticImages(n), 32, max_epochs=10)
    ib = InfoBatch(batch_size=32, seed=seed)
    fake_loss = torch.rand(n, generator=torch.Generator().manual_seed(loss_seed))
    for epoch in range(epochs):
        for b in ib.epoch(epoch, ctx):
            ib.after_train_step(b, fake_loss[b.idx] * (epoch + 1 if grow else 1), torch.zeros(b.x.shape[0], 4))
    return ib, ctx


def test_infobatch_resume_in_the_tail_keeps_the_leftover_weights():
    """10 epochs (8.75): a checkpoint after the last pruning epoch restores the weights the tail uses."""
    ib, ctx = _trained_infobatch(n=200, seed=2, loss_seed=4, epochs=8)
    again = InfoBatch(batch_size=32, seed=2)
    again.load_state_dict(ib.state_dict(), CPU)
    first, second = _epoch(ib, 8, ctx), _epoch(again, 8, ctx)
    assert all(b.tag == "full" for b in first) and (torch.cat([b.weight for b in first]) == 2.0).any()
    assert all(torch.equal(a.weight, c.weight) for a, c in zip(first, second))
    older = {k: v for k, v in ib.state_dict().items() if k != "weights"}    # a checkpoint from before
    legacy = InfoBatch(batch_size=32, seed=2)
    legacy.load_state_dict(older, CPU)
    assert all(b.weight is None for b in _epoch(legacy, 8, ctx))


def test_infobatch_resume_gives_the_same_batches():
    """state_dict after two epochs (scores from training losses, generator) → identical epochs 2 and 3."""
    ib, ctx = _trained_infobatch(n=300, seed=5, loss_seed=9, epochs=2, grow=True)
    state = ib.state_dict()
    again = InfoBatch(batch_size=32, seed=5)
    again.load_state_dict(state, CPU)
    for epoch in (2, 3):
        first, second = _epoch(ib, epoch, ctx), _epoch(again, epoch, ctx)
        assert ib.last_epoch["pruned"] > 0
        assert [b.idx.tolist() for b in first] == [b.idx.tolist() for b in second]
        assert all(torch.equal(a.weight, c.weight) for a, c in zip(first, second))


@pytest.mark.parametrize("key,value", [("prune_ratio", 1.0), ("prune_ratio", 0.95), ("prune_ratio", -0.1),
                                       ("prune_ratio", True), ("prune_ratio", "half"), ("anneal", 1.5),
                                       ("anneal", -0.01), ("delta", 1.5), ("delta", "most")])
def test_infobatch_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=rf"^strategy\.{key}=.*accepted") as info:
        build_strategy(OmegaConf.create({"name": "infobatch", key: value}), B, 0)
    assert "\n" not in str(info.value)


def test_infobatch_prune_ratio_cap_and_delta_anneal_exclusive():
    """r <= 0.9 (InfoBatch clamps its keep ratio at >= 0.1; here larger r is refused); delta and its
    deprecated alias anneal are mutually exclusive; neither: delta 0.875."""
    assert InfoBatch(B, 0, prune_ratio=0.9).prune_ratio == 0.9
    with pytest.raises(ConfigError, match=r"^strategy\.prune_ratio=0\.91: not accepted; accepted: a number in \[0, 0\.9\]"):
        InfoBatch(B, 0, prune_ratio=0.91)
    with pytest.raises(ConfigError, match=r"^strategy\.delta=0\.8, strategy\.anneal=0\.2: not accepted together"):
        build_strategy(compose_config(["strategy=infobatch", "strategy.delta=0.8", "strategy.anneal=0.2"]).strategy, B, 0)
    assert build_strategy(compose_config(["strategy=infobatch", "strategy.anneal=0.25"]).strategy, B, 0).delta == 0.75
    assert build_strategy(compose_config(["strategy=infobatch", "strategy.delta=0.75"]).strategy, B, 0).delta == 0.75
    assert InfoBatch(B, 0).params() == {"prune_ratio": 0.5, "delta": 0.875, "anneal": 0.125}


# ------------------------------------------------------------------------------ Composer SB

def test_should_select_is_composers_rule():
    """Window [start, end); interrupt 2: batches 0, 2, 4 select, 1, 3, 5 train in full; 0: all; 1: none."""
    assert [should_select(0.5, i, 0.5, 0.9, 2) for i in range(6)] == [True, False] * 3
    assert [should_select(0.5, i, 0.5, 0.9, 3) for i in range(6)] == [True, True, False] * 2
    assert all(should_select(0.6, i, 0.5, 0.9, 0) for i in range(6))
    assert not any(should_select(0.6, i, 0.5, 0.9, 1) for i in range(6))
    assert not should_select(0.49, 0, 0.5, 0.9, 0) and not should_select(0.9, 0, 0.5, 0.9, 0)


def test_composer_topk_trains_exactly_the_highest_losses_of_each_batch():
    """rule=topk, keep 0.25, interrupt 0, window open: each trained batch is exactly the int(0.25·n)
    highest selection losses of its loaded batch (losses recomputed here in the same mode)."""
    data = SyntheticImages(200)
    ctx = _context(data, 32, max_epochs=2)
    sb = ComposerSB(batch_size=32, seed=0, keep=0.25, rule="topk", interrupt=0, start=0.0, end=1.0,
                    select_mode="eval")
    batches = _epoch(sb, 0, ctx)
    loaded = ctx.source.permutation(0).split(32)
    assert len(batches) == len(loaded) == 7
    ctx.model.eval()
    for batch, idx in zip(batches, loaded):
        with torch.no_grad():
            losses = nn.functional.cross_entropy(ctx.model(data.x[idx]), data.y[idx], reduction="none")
        k = int(0.25 * idx.shape[0])
        top = idx[torch.topk(losses, k).indices]
        assert batch.x.shape[0] == k and set(batch.idx.tolist()) == set(top.tolist())
        assert torch.equal(batch.x, data.x[batch.idx]) and batch.weight is None
    snap = ctx.counters.snapshot()
    assert snap["considered"] == snap["select_forwarded"] == 200
    assert snap["kept"] == 6 * 8 + int(0.25 * 8)


def test_composer_sample_rule_matches_composers_rank_distribution():
    """rule=sample, n = 4, keep 0.5: 2 ranks drawn without replacement, weights ∝ (r + 0.5)/4 = 1:3:5:7.

    Chi-square of the 6 kept pairs over 20 000 draws against the exact successive-sampling
    probabilities P({i, j}) = w_i w_j / (1 − w_i) + w_j w_i / (1 − w_j): p > 1e-6.
    """
    probs = composer_rank_probabilities(4, 0.5)
    torch.testing.assert_close(probs, torch.tensor([1.0, 3, 5, 7], dtype=torch.float64) / 16)
    sb = ComposerSB(batch_size=4, seed=3, keep=0.5)
    losses = torch.tensor([0.9, 0.1, 2.0, 0.5])           # ranks: pos1 < pos3 < pos0 < pos2
    rank_of = {1: 0, 3: 1, 0: 2, 2: 3}
    pairs = list(itertools.combinations(range(4), 2))
    counts = dict.fromkeys(pairs, 0)
    draws = 20_000
    for _ in range(draws):
        kept = tuple(sb.positions(losses).tolist())
        counts[kept] += 1
    w = probs.tolist()
    expected = []
    for i, j in pairs:
        a, c = w[rank_of[i]], w[rank_of[j]]
        expected.append(draws * (a * c / (1 - a) + c * a / (1 - c)))
    assert stats.chisquare([counts[p] for p in pairs], expected).pvalue > 1e-6
    assert counts[(0, 2)] > counts[(1, 3)]                   # the two highest losses beat the two lowest


def test_composer_interrupt_batches_are_full_and_window_is_start_end():
    """max_epochs 10, window [0.5, 0.9): epochs 0-4 and 9 train plain batches without a selection
    forward; in epochs 5-8 batches 0, 2, 4, … select int(keep·n) and 1, 3, 5, … train in full."""
    data = SyntheticImages(200)
    ctx = _context(data, 32, max_epochs=10)
    sb = ComposerSB(batch_size=32, seed=0)
    assert sb.params() == {"keep": 0.5, "start": 0.5, "end": 0.9, "interrupt": 2, "scale_factor": 1.0,
                           "rule": "sample", "select_mode": "train_dropout", "select_precision": "train"}
    sizes = [32] * 6 + [8]
    for epoch in range(10):
        before = ctx.counters.snapshot()
        batches = _epoch(sb, epoch, ctx)
        after = ctx.counters.snapshot()
        trained = [b.x.shape[0] for b in batches]
        if 5 <= epoch <= 8:
            assert trained == [n // 2 if i % 2 == 0 else n for i, n in enumerate(sizes)]
            assert [b.tag for b in batches] == ["selected", "full"] * 3 + ["selected"]
            assert after["select_forwarded"] - before["select_forwarded"] == 32 * 3 + 8
        else:
            assert trained == sizes and after["select_forwarded"] == before["select_forwarded"]
        assert after["considered"] - before["considered"] == 200
        assert after["kept"] - before["kept"] == sum(trained)


class _Recording(nn.Module):
    """Linear behind a dropout; records (dropout active, CPU autocast dtype or None) at each forward."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(64, 4)
        self.seen: list[tuple] = []

    def forward(self, x):
        amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.seen.append((self.drop.training, amp))
        return self.fc(self.drop(x.flatten(1)))


@pytest.mark.parametrize("overrides,train_precision,expected", [
    ({}, "fp32", (True, None)),                          # Composer: the model's training mode, dropout on,
    ({}, "bf16", (True, torch.bfloat16)),                # in the training step's precision
    ({"select_mode": "train"}, "bf16", (False, torch.bfloat16)),
    ({"select_precision": "fp32"}, "bf16", (True, None)),
    ({"select_mode": "eval", "select_precision": "fp16"}, "fp32", (False, torch.float16)),
])
def test_composer_selection_forward_mode_and_precision(overrides, train_precision, expected):
    data = SyntheticImages(64)
    torch.manual_seed(0)
    model = _Recording()
    ctx = _context(data, 16, max_epochs=2, model=model)
    ctx.extras["precision"] = train_precision
    sb = ComposerSB(batch_size=16, seed=0, start=0.0, interrupt=0, **overrides)
    batches = _epoch(sb, 0, ctx)
    assert model.seen == [expected] * 4 and [b.x.shape[0] for b in batches] == [8] * 4
    assert model.training and model.drop.training                       # the model's mode is restored


def test_composer_keeps_at_least_one_example():
    """keep·n < 1 (keep 0.1 of a last batch of 4): one example is trained (Composer's int(keep·n) = 0)."""
    data = SyntheticImages(20)
    ctx = _context(data, 16, max_epochs=2)
    sb = ComposerSB(batch_size=16, seed=0, keep=0.1, start=0.0, interrupt=0)
    assert [b.x.shape[0] for b in _epoch(sb, 0, ctx)] == [1, 1]


def test_composer_keep_one_never_selects():
    data = SyntheticImages(64)
    ctx = _context(data, 16, max_epochs=2)
    sb = ComposerSB(batch_size=16, seed=0, keep=1.0, start=0.0, interrupt=0)
    assert [b.x.shape[0] for b in _epoch(sb, 0, ctx)] == [16] * 4
    assert ctx.counters.select_forwarded == 0


def test_composer_scale_factor_downscales_only_the_selection_forward():
    data = SyntheticImages(64)
    ctx = _context(data, 16, max_epochs=2)
    sb = ComposerSB(batch_size=16, seed=0, start=0.0, interrupt=0, scale_factor=0.5)
    batches = _epoch(sb, 0, ctx)
    assert ctx.model.sizes == [(16, 1, 4, 4)] * 4                      # selection forwards: 8×8 → 4×4
    assert all(b.x.shape == (8, 1, 8, 8) for b in batches)              # trained at full size
    assert ctx.timer.totals["select_forward"] > 0


def test_composer_resume_gives_the_same_batches():
    data = SyntheticImages(160)
    ctx = _context(data, 32, max_epochs=2)
    sb = ComposerSB(batch_size=32, seed=4, start=0.0, interrupt=0)
    _epoch(sb, 0, ctx)
    again = ComposerSB(batch_size=32, seed=4, start=0.0, interrupt=0)
    again.load_state_dict(sb.state_dict(), CPU)
    first, second = _epoch(sb, 1, ctx), _epoch(again, 1, ctx)
    assert [b.idx.tolist() for b in first] == [b.idx.tolist() for b in second]


@pytest.mark.parametrize("key,value", [("keep", 0.0), ("keep", 1.2), ("start", -0.1), ("end", 1.1),
                                       ("interrupt", -1), ("interrupt", 1.5), ("interrupt", True),
                                       ("scale_factor", 0.0), ("scale_factor", 1.5), ("rule", "random"),
                                       ("select_mode", "infer"), ("select_precision", "fp8")])
def test_composer_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=rf"^strategy\.{key}=.*accepted"):
        build_strategy(OmegaConf.create({"name": "composer_sb", key: value}), B, 0)


def test_composer_rejects_start_not_below_end():
    with pytest.raises(ConfigError, match=r"^strategy\.start=0\.9, strategy\.end=0\.5"):
        ComposerSB(B, 0, start=0.9, end=0.5)


@pytest.mark.parametrize("name", ["infobatch", "composer_sb"])
def test_max_epochs_null_is_refused(name, tmp_path):
    cfg = compose_config([f"strategy={name}", "train.max_epochs=null", "train.max_time_s=10"])
    with pytest.raises(ConfigError, match=r"^train\.max_epochs=None: .*strategy=" + name):
        validate_config(cfg)
    data = SyntheticImages(32)
    ctx = _context(data, 16, max_epochs=None)
    with pytest.raises(ConfigError, match=r"^train\.max_epochs"):
        _epoch(build_strategy(cfg.strategy, 16, 0), 0, ctx)


# ------------------------------------------------------------------------------ end-to-end

@pytest.fixture(scope="module")
def small_bundle(fmnist_bundle):
    """The shared real Fashion-MNIST bundle (512 train) with the test set cut to 256 images."""
    test = fmnist_bundle.test
    return dataclasses.replace(fmnist_bundle, test=type(test)(test.images[:256], test.targets[:256], test.transform))


def _check_unpacked_counters(trainer, summary):
    snap = trainer.counters.snapshot()
    assert snap["kept"] == snap["backpropped"] == snap["train_forwarded"] == summary["examples_backpropped"]
    assert summary["examples_forwarded"] == snap["select_forwarded"] + snap["train_forwarded"]
    assert summary["status"] == "completed"


def test_infobatch_end_to_end(tmp_path, fmnist_root, small_bundle):
    """2 epochs with delta 1: epoch 0 has no scores (all 512 trained), epoch 1 prunes half the below-mean ones."""
    trainer, summary = run_tiny(tmp_path, fmnist_root, ["strategy=infobatch", "strategy.delta=1.0",
                                                       "train.max_epochs=2", "train.tensorboard=false"],
                                bundle=small_bundle)
    _check_unpacked_counters(trainer, summary)
    ib = trainer.strategy
    below = ib.last_epoch["below_mean"]
    assert 0 < below < N and ib.last_epoch["pruned"] == below - int(0.5 * below)
    snap = trainer.counters.snapshot()
    assert snap["considered"] == 2 * N and snap["select_forwarded"] == 0
    assert snap["backpropped"] == 2 * N - ib.last_epoch["pruned"]
    assert [row["examples_considered"] for row in trainer.eval_rows] == [N, 2 * N]
    assert summary["strategy"] == "infobatch"
    assert summary["strategy_params"] == {"prune_ratio": 0.5, "delta": 1.0, "anneal": 0.0}
    assert not torch.isnan(ib.scores).any()                 # every example trained in epoch 0


def test_composer_end_to_end(tmp_path, fmnist_root, small_bundle):
    """2 epochs, window [0.5, 0.9): epoch 1 selects on batches 0, 2, 4, 6 (32 of 64 each)."""
    trainer, summary = run_tiny(tmp_path, fmnist_root, ["strategy=composer_sb", "train.max_epochs=2",
                                                       "train.tensorboard=false"], bundle=small_bundle)
    _check_unpacked_counters(trainer, summary)
    snap = trainer.counters.snapshot()
    assert snap["considered"] == 2 * N
    assert snap["select_forwarded"] == 4 * B
    assert snap["backpropped"] == N + 4 * B + 4 * (B // 2)
    assert snap["steps"] == 2 * (N // B)
    assert summary["phase_s"]["select_forward"] > 0
    assert summary["strategy_params"]["keep"] == 0.5
    assert trainer.ctx.extras["precision"] == "fp32"             # select_precision: train resolves to it


@pytest.mark.slow
@pytest.mark.parametrize("name", ["infobatch", "composer_sb"])
def test_two_ranks_run_in_lockstep(name, tmp_path, fmnist_root):
    """K = 2 (torchrun, gloo): both ranks take the same steps and finish. InfoBatch: epoch 0 trains
    all 512, epoch 1 prunes (global score table); Composer: per-rank selection of 16 of each 32."""
    from test_distributed import torchrun

    extra = ["strategy.delta=1.0"] if name == "infobatch" else []        # epoch 1 of 2 prunes
    proc = torchrun(str(tmp_path / "run"), fmnist_root, [f"strategy={name}", *extra])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    if name == "composer_sb":
        assert summary["examples_backpropped"] == N + 2 * (4 * 16 + 4 * 32)
        assert summary["examples_forwarded"] == summary["examples_backpropped"] + 2 * 4 * 32
        assert summary["steps"] == 2 * N // B
    else:
        assert N < summary["examples_backpropped"] < 2 * N
        assert summary["examples_forwarded"] == summary["examples_backpropped"]
