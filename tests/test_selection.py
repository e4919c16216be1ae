"""Statistical and behavioural tests of the SB selection rule, the batch packer and the drop-in API.

Every random quantity is drawn from a fixed seed. Statistical bounds are binomial standard errors
(σ) with 5σ margins (a two-sided 5σ excursion has probability ≈ 6e-7 per check), plus an explicit
allowance where the estimator has a known, bounded bias; each bound states its reasoning.
"""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from torch import nn

from selective_backprop import SelectiveBackprop
from selective_backprop.errors import ConfigError
from selective_backprop.selection import rules
from selective_backprop.selection.packer import BatchPacker
from selective_backprop.selection.selector import LossSelector, SeededGenerator, selection_forward

R = 1024  # the authors' history length



# ------------------------------------------------------------------------------ β ↔ selectivity

@pytest.mark.parametrize(("selectivity", "beta"), [(0.33, 1 / 0.33 - 1), (0.5, 1.0), (0.25, 3.0), (0.2, 4.0)])
def test_selectivity_maps_to_beta(selectivity, beta):
    """s = E[U^β] = 1/(β+1): 33 % ↔ β ≈ 2.03, 50 % ↔ 1, 25 % ↔ 3, 20 % ↔ 4 (PAPER.md, SB)."""
    got_beta, got_s = rules.resolve_beta(None, selectivity)
    assert got_beta == pytest.approx(beta, rel=1e-12)
    assert got_s == selectivity
    if selectivity == 0.33:
        assert got_beta == pytest.approx(2.0303, abs=1e-4)
    # and back: β alone gives s = 1/(β+1)
    assert rules.resolve_beta(beta, None)[1] == pytest.approx(selectivity, rel=1e-12)


def test_resolve_beta_both_consistent_and_default():
    assert rules.resolve_beta(1.0, 0.5) == (1.0, 0.5)
    assert rules.resolve_beta(2.0, 1 / 3) == pytest.approx((2.0, 1 / 3))
    assert rules.resolve_beta(None, None) == pytest.approx((2.0, 1 / 3))      # neither → β = 2


def test_resolve_beta_inconsistent_names_both_fields():
    with pytest.raises(ConfigError) as err:
        rules.resolve_beta(2.0, 0.5)
    assert "strategy.beta" in str(err.value) and "strategy.selectivity" in str(err.value)


@pytest.mark.parametrize(("beta", "selectivity", "field"), [
    (None, 1.0, "strategy.selectivity"),   # β = 1/s − 1 = 0: the rule would keep everything
    (None, 0.0, "strategy.selectivity"),
    (None, 1.5, "strategy.selectivity"),
    (0.0, None, "strategy.beta"),
    (-1.0, None, "strategy.beta"),
    (float("nan"), None, "strategy.beta"),
])
def test_resolve_beta_rejects(beta, selectivity, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        rules.resolve_beta(beta, selectivity)


# ------------------------------------------------------------------------------ the SB rule, statistically

def _uniform(n, gen):
    return torch.rand(n, generator=gen)


def _exponential(n, gen):
    return torch.empty(n).exponential_(1.0, generator=gen)


CDFS = {"uniform": (_uniform, lambda x: x), "exponential": (_exponential, lambda x: 1 - torch.exp(-x))}


@pytest.mark.parametrize("percentile", ["strict", "inclusive"])
@pytest.mark.parametrize("dist", sorted(CDFS))
@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_kept_fraction_per_decile(beta, dist, percentile):
    """i.i.d. losses through LossSelector(β, R=1024): kept share of loss decile d ≈ 10∫_{d/10}^{(d+1)/10} u^β du.

    Both rules: for continuous losses they differ by at most the batch's own entries (strict counts
    the window strictly below after the whole batch is pushed; inclusive, one by one, <= itself):
    for continuous losses the two differ only in which of the batch's own losses they count (max
    |ΔP| ≈ 0.03 after warm-up, issue 11), so the same bounds hold.

    The rule only sees ranks, so any continuous loss distribution gives the same result when
    deciles are taken on its CDF (uniform and exponential here). Tolerance per decile:
    5·sqrt(σ_bin² + σ_win²) + β/R, with σ_bin² = e(1−e)/n_d the Bernoulli noise, σ_win the noise of
    the empirical CDF (window of R: sd ≤ 0.5/√R per window, ≈ M/R independent windows, times the
    slope β of u^β → ≤ β/(2√M)), and β/R the bias of counting the loss itself in a window of R.
    """
    sample, cdf = CDFS[dist]
    # the loss stream and the selector's draws must come from unrelated seeds (the same seed would
    # make the draws replay earlier losses of the uniform stream and correlate with the window)
    gen = torch.Generator().manual_seed(1234 + int(beta))
    selector = LossSelector(beta, history=R, seed=7, percentile=percentile)
    selector.select(sample(R, gen))                       # warm-up: fill the history
    n_batches, batch = 500, 128
    m = n_batches * batch
    kept = torch.zeros(10)
    total = torch.zeros(10)
    for _ in range(n_batches):
        losses = sample(batch, gen)
        mask, _ = selector.select(losses)
        decile = torch.clamp((cdf(losses) * 10).floor().long(), 0, 9)
        total += torch.bincount(decile, minlength=10).float()
        kept += torch.bincount(decile[mask], minlength=10).float()
    for d in range(10):
        expected = 10 * (((d + 1) / 10) ** (beta + 1) - (d / 10) ** (beta + 1)) / (beta + 1)
        sigma = math.sqrt(expected * (1 - expected) / float(total[d]) + beta ** 2 / (4 * m))
        tol = 5 * sigma + beta / R
        got = float(kept[d] / total[d])
        assert abs(got - expected) < tol, (d, got, expected, tol)
    # overall kept share ≈ 1/(β+1); 5σ binomial, + 1/R for E[rank^β]/R^β − 1/(β+1) ≈ 1/(2R)
    share = float(kept.sum()) / m
    s = 1 / (beta + 1)
    assert abs(share - s) < 5 * math.sqrt(s * (1 - s) / m) + 1 / R, (share, s)


@pytest.mark.parametrize("percentile", ["strict", "inclusive"])
def test_kept_share_depends_on_rank_not_scale(percentile):
    """Same seed, losses transformed by a strictly increasing map (exp·1000+5) → identical keep masks."""
    gen = torch.Generator().manual_seed(3)
    losses = torch.rand(4000, generator=gen, dtype=torch.float64)
    a, b = (LossSelector(2.0, history=R, seed=11, percentile=percentile) for _ in range(2))
    for chunk in losses.split(128):
        ma, _ = a.select(chunk.float())
        mb, _ = b.select((torch.exp(chunk * 3) * 1000 + 5).float())
        assert torch.equal(ma, mb)


# ------------------------------------------------------------------------------ sequential percentiles

def _naive_percentiles(stream: list[float], capacity: int) -> list[float]:
    """Push one by one into deque(maxlen=R); percentile = count(≤ L) / len (L itself included)."""
    window: deque = deque(maxlen=capacity)
    out = []
    for loss in stream:
        window.append(loss)
        out.append(sum(1 for v in window if v <= loss) / len(window))
    return out


def _streams():
    gen = torch.Generator().manual_seed(99)
    ties = torch.randint(0, 7, (2600,), generator=gen).float() / 4        # many exact ties
    cont = torch.rand(2600, generator=gen)
    return {"ties": ties, "continuous": cont}


_STREAMS = _streams()
_NAIVE: dict = {}


def _naive(kind: str, capacity: int) -> torch.Tensor:
    if (kind, capacity) not in _NAIVE:
        _NAIVE[kind, capacity] = torch.tensor(_naive_percentiles(_STREAMS[kind].tolist(), capacity))
    return _NAIVE[kind, capacity]


@pytest.mark.parametrize("kind", ["ties", "continuous"])
@pytest.mark.parametrize("capacity", [1, 5, 1024])
@pytest.mark.parametrize("sizes", [[1], [7], [128], [1500], [3, 1, 40, 1100, 9, 128]])
def test_sequential_percentiles_match_naive_loop(kind, capacity, sizes):
    """Vectorised percentiles + push_history == the one-by-one deque loop, for any batching.

    Covers a history not yet full (the first batches), n > R (batch 7 with R = 5, 1500 with R = 1024)
    and exact ties. Percentiles are k/len with len ≤ 1024: compared exactly up to float32 rounding.
    """
    stream = _STREAMS[kind]
    expected = _naive(kind, capacity)
    history = torch.zeros(capacity)
    filled = 0
    got = []
    pos, i = 0, 0
    while pos < stream.shape[0]:
        n = sizes[i % len(sizes)]
        chunk = stream[pos:pos + n]
        got.append(rules.sequential_percentiles(history, filled, chunk))
        history, filled = rules.push_history(history, filled, chunk)
        assert filled == min(capacity, pos + chunk.shape[0])
        pos += chunk.shape[0]
        i += 1
    torch.testing.assert_close(torch.cat(got), expected.float(), rtol=0, atol=1e-6)
    # the history is the last R losses in time order
    torch.testing.assert_close(history[capacity - filled:], stream[-filled:])


def _naive_strict(stream: list[float], capacity: int, sizes: list[int]) -> list[float]:
    """The authors' rule by hand: append the whole batch to deque(maxlen=R), then count(< L) / len."""
    window: deque = deque(maxlen=capacity)
    out, pos, i = [], 0, 0
    while pos < len(stream):
        batch = stream[pos:pos + sizes[i % len(sizes)]]
        window.extend(batch)
        out += [sum(1 for v in window if v < loss) / len(window) for loss in batch]
        pos, i = pos + len(batch), i + 1
    return out


@pytest.mark.parametrize("kind", ["ties", "continuous"])
@pytest.mark.parametrize("capacity", [1, 5, 1024])
@pytest.mark.parametrize("sizes", [[1], [7], [1500], [3, 1, 40, 1100, 9, 128]])
def test_batch_percentiles_match_naive_strict_loop(kind, capacity, sizes):
    """rules.batch_percentiles + push_history == the batch-first, strictly-below loop, for any batching
    (history not yet full, n > R, exact ties). Percentiles k/len, len ≤ 1024: exact up to rounding."""
    stream = _STREAMS[kind]
    expected = torch.tensor(_naive_strict(stream.tolist(), capacity, sizes))
    history, filled, got, pos, i = torch.zeros(capacity), 0, [], 0, 0
    while pos < stream.shape[0]:
        chunk = stream[pos:pos + sizes[i % len(sizes)]]
        got.append(rules.batch_percentiles(history, filled, chunk))
        history, filled = rules.push_history(history, filled, chunk)
        pos, i = pos + chunk.shape[0], i + 1
    torch.testing.assert_close(torch.cat(got), expected.float(), rtol=0, atol=1e-6)


def test_batch_percentiles_specials():
    """NaN is never below anything (counts in the length only; a NaN loss gets 0); ±inf order normally."""
    nan, inf = float("nan"), float("inf")
    history = torch.tensor([nan, 1.0, -inf, 3.0])
    got = rules.batch_percentiles(history, 4, torch.tensor([2.0, nan, inf, -inf]))
    # window after the push (R = 4): [2, nan, inf, -inf]
    torch.testing.assert_close(got, torch.tensor([1 / 4, 0.0, 2 / 4, 0.0]))


def test_selector_probabilities_match_naive_percentile_power():
    """LossSelector(β, inclusive).probabilities == max(naive_percentile^β, prob_min) across calls."""
    stream = _STREAMS["ties"]
    for prob_min in (0.0, 0.3):
        selector = LossSelector(2.5, history=5, prob_min=prob_min, percentile="inclusive")
        got = torch.cat([selector.probabilities(c) for c in stream.split(37)])
        expected = torch.clamp(_naive("ties", 5).float() ** 2.5, min=prob_min)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert float(got.min()) >= prob_min


@pytest.mark.parametrize("percentile", ["strict", "inclusive"])
def test_selector_global_stream_slices_this_ranks_part(percentile):
    """With all_losses (data parallel) the history is global; this rank gets its own slice."""
    gen = torch.Generator().manual_seed(5)
    single, ranked = (LossSelector(2.0, history=64, percentile=percentile) for _ in range(2))
    for _ in range(10):
        all_losses = torch.rand(48, generator=gen)
        full = single.probabilities(all_losses)
        part = ranked.probabilities(all_losses[16:32], all_losses=all_losses, offset=16)
        torch.testing.assert_close(part, full[16:32])
    assert ranked.filled == single.filled == 64


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_all_equal_losses_are_always_kept(beta):
    """Inclusive rule, ties: every history entry ≤ L, so percentile 1, probability 1, every example kept."""
    selector = LossSelector(beta, history=R, seed=0, percentile="inclusive")
    for _ in range(20):
        mask, probs = selector.select(torch.full((128,), 0.7))
        assert torch.equal(probs, torch.ones(128))
        assert bool(mask.all())


def test_prob_min_floors_probabilities():
    pct = torch.tensor([0.0, 0.1, 0.5, 1.0])
    torch.testing.assert_close(rules.keep_probabilities(pct, 2.0), torch.tensor([0.0, 0.01, 0.25, 1.0]))
    torch.testing.assert_close(rules.keep_probabilities(pct, 2.0, prob_min=0.2), torch.tensor([0.2, 0.2, 0.25, 1.0]))
    # a strictly decreasing stream ranks last every time: percentile 1/len, so only the floor keeps it
    selector = LossSelector(3.0, history=R, prob_min=0.25, percentile="inclusive")
    _, probs = selector.select(torch.linspace(10, 0, 500))
    assert probs[0] == 1.0 and torch.all(probs[10:] == 0.25)


def test_selector_rejects_bad_arguments():
    with pytest.raises(ConfigError, match=r"strategy\.history"):
        LossSelector(2.0, history=0)
    with pytest.raises(ConfigError, match=r"strategy\.prob_min"):
        LossSelector(2.0, prob_min=1.5)
    with pytest.raises(ConfigError, match=r"strategy\.percentile='exact'"):
        LossSelector(2.0, percentile="exact")


def test_draw_is_bernoulli():
    gen = torch.Generator().manual_seed(0)
    assert not rules.draw(torch.zeros(10_000), gen).any()
    assert rules.draw(torch.ones(10_000), gen).all()
    n, p = 100_000, 0.3
    share = float(rules.draw(torch.full((n,), p), gen).float().mean())
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)          # 5σ binomial


def test_kept_first_order_is_stable():
    mask = torch.tensor([False, True, False, True, True, False])
    assert rules.kept_first_order(mask).tolist() == [1, 3, 4, 0, 2, 5]


def test_seeded_generator_continues_its_stream_and_resumes():
    """get() on the same device returns the same generator (the stream continues), state round-trips.

    torch.device('cpu:0') is the same device as the generator's device('cpu'); on CUDA the trainer
    asks for torch.device('cuda') while a CUDA generator reports 'cuda:0' — the same situation.
    """
    sg = SeededGenerator(4)
    first = torch.rand(5, generator=sg.get(torch.device("cpu")))
    second = torch.rand(5, generator=sg.get(torch.device("cpu")))
    assert not torch.equal(first, second)
    state = sg.state_dict()
    third = torch.rand(5, generator=sg.get(torch.device("cpu")))
    restored = SeededGenerator(0)
    restored.load_state_dict(state)
    assert torch.equal(torch.rand(5, generator=restored.get(torch.device("cpu"))), third)

    indexed = SeededGenerator(4)
    a = torch.rand(5, generator=indexed.get(torch.device("cpu:0")))
    b = torch.rand(5, generator=indexed.get(torch.device("cpu:0")))
    assert torch.equal(a, first)
    assert not torch.equal(a, b), "the generator was re-created and re-seeded: the same draws repeat"


# ------------------------------------------------------------------------------ the packer

def _rows(idx: torch.Tensor) -> torch.Tensor:
    """A 2×3 feature block derived from the index, to check rows stay together."""
    return idx.view(-1, 1, 1).float() * 10 + torch.arange(6.0).view(1, 2, 3)


def _packer_stream(seed: int, n_adds: int = 150):
    """(idx, mask) adds: small adds first, then larger ones (the ring buffer grows), some all/none kept."""
    gen = torch.Generator().manual_seed(seed)
    start = 0
    for k in range(n_adds):
        hi = 10 if k < 30 else (300 if k < 60 else 90)
        rows = int(torch.randint(1, hi + 1, (1,), generator=gen))
        idx = torch.arange(start, start + rows)
        start += rows
        if k % 17 == 3:
            mask = torch.zeros(rows, dtype=torch.bool)
        elif k % 13 == 5:
            mask = torch.ones(rows, dtype=torch.bool)
        else:
            mask = torch.rand(rows, generator=gen) < 0.4
        yield idx, mask


def _run_packer(packer: BatchPacker, adds, batch_size: int):
    """Feed adds, collecting every batch pop_ready yields; returns (batches, kept order, yielded/kept per add)."""
    batches, kept, progress = [], [], []
    n_yielded = 0
    n_kept = 0
    for idx, mask in adds:
        packer.add([idx, _rows(idx)], mask)
        kept.append(idx[mask])
        n_kept += int(mask.sum())
        for b_idx, b_x in packer.pop_ready():
            assert b_idx.shape[0] == batch_size and b_x.shape == (batch_size, 2, 3)
            batches.append((b_idx, b_x))
            n_yielded += batch_size
        progress.append((n_yielded, n_kept))
    return batches, torch.cat(kept), progress


@pytest.mark.parametrize("lag", [None, 0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 32, 128])
def test_packer_yields_every_kept_row_once_in_order(batch_size, lag):
    """Full batches of exactly batch_size; kept rows out exactly once, in arrival order; nothing unkept.

    lag=1/2 emulates CUDA's lagged count read: same rows, same order, batches just come out later.
    Once the ring buffer has stopped growing (adds 60+ are smaller than earlier ones; a growth
    drains and re-queues, which postpones that add's batches), the batches of add k come out
    exactly at add k + lag.
    """
    packer = BatchPacker(batch_size, lag=lag)
    batches, kept, progress = _run_packer(packer, _packer_stream(batch_size), batch_size)
    delay = lag or 0
    for k, (n_yielded, n_kept) in enumerate(progress):
        assert n_yielded <= n_kept
        if k >= 60 + delay:
            known = progress[k - delay][1]
            assert n_yielded == known - known % batch_size, (k, n_yielded, known)
    late = list(packer.drain_ready())                      # lagged full batches the host had not seen yet
    assert all(b[0].shape[0] == batch_size for b in late) and (lag or not late)
    batches += late
    pending = packer.drain_count()
    assert pending < batch_size
    rest = packer.flush()
    out_idx = [b[0] for b in batches] + ([] if rest is None else [rest[0]])
    out_x = [b[1] for b in batches] + ([] if rest is None else [rest[1]])
    assert (rest is None) == (pending == 0) and (rest is None or rest[0].shape[0] == pending)
    assert torch.equal(torch.cat(out_idx), kept)
    assert torch.equal(torch.cat(out_x), _rows(kept))
    assert packer.drain_count() == 0 and packer.flush() is None


@pytest.mark.parametrize("lag", [1, 2])
def test_lagged_packer_matches_unlagged_batches(lag):
    """The CUDA path (lag) yields the very same sequence of full batches as lag 0, only later."""
    ref, _, _ = _run_packer(BatchPacker(32, lag=0), _packer_stream(5), 32)
    lagged_packer = BatchPacker(32, lag=lag)
    lagged, _, _ = _run_packer(lagged_packer, _packer_stream(5), 32)
    lagged_packer.drain_count()                            # end of stream: read the true count ...
    lagged += list(lagged_packer.pop_ready())              # ... and emit the batches it now knows
    assert len(lagged) == len(ref)
    for (a_idx, a_x), (b_idx, b_x) in zip(ref, lagged):
        assert torch.equal(a_idx, b_idx) and torch.equal(a_x, b_x)


@pytest.mark.parametrize("lag", [1, 2])
def test_lagged_packer_flush_returns_only_a_partial_batch(lag):
    """flush() after the last pop_ready returns the remainder: fewer than batch_size rows (docstring).

    With lag, full batches the host has not yet seen must not be handed out as one oversized
    'remainder' (the drop-in's flush on CUDA would then train on > batch_size rows).
    """
    packer = BatchPacker(32, lag=lag)
    _run_packer(packer, _packer_stream(5), 32)
    if packer.drain_count() >= 32:
        with pytest.raises(RuntimeError, match="drain_ready"):
            packer.flush()                                  # refuses to hand out an oversized batch
    late = list(packer.drain_ready())
    assert all(b[0].shape[0] == 32 for b in late)
    rest = packer.flush()
    assert rest is None or rest[0].shape[0] < 32, f"flush returned {rest[0].shape[0]} rows"


def test_packer_state_round_trip_continues_the_stream():
    """state_dict holds exactly the pending rows; a restored packer (any lag) continues identically."""
    adds = list(_packer_stream(21))
    ref = BatchPacker(64)
    ref_batches, kept, _ = _run_packer(ref, adds, 64)
    ref_rest = ref.flush()

    first = BatchPacker(64)
    head, kept_head, _ = _run_packer(first, adds[:70], 64)
    state = first.state_dict()
    n_out = 64 * len(head)
    assert torch.equal(state["pending"][0], kept_head[n_out:])
    assert torch.equal(state["pending"][1], _rows(kept_head[n_out:]))
    for lag in (0, 1):
        restored = BatchPacker(64, lag=lag)
        restored.load_state_dict(state, device=torch.device("cpu"))
        assert restored.drain_count() == kept_head.shape[0] - n_out
        tail, _, _ = _run_packer(restored, adds[70:], 64)
        restored.drain_count()
        tail += list(restored.pop_ready())
        rest = restored.flush()
        got = torch.cat([b[0] for b in head + tail] + ([] if rest is None else [rest[0]]))
        assert torch.equal(got, kept)
        assert len(head) + len(tail) == len(ref_batches)
        assert (rest is None) == (ref_rest is None) and (rest is None or torch.equal(rest[0], ref_rest[0]))


def test_packer_load_state_into_a_used_packer():
    """Loading a state replaces the queue, also in a packer that was used before (rows or none pending)."""
    used = BatchPacker(4)
    used.add([torch.arange(10)], torch.ones(10, dtype=torch.bool))
    assert [b[0].tolist() for b in used.pop_ready()] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with_rows = {"pending": [torch.tensor([100, 101, 102])]}
    used.load_state_dict(with_rows)
    assert used.drain_count() == 3
    assert used.flush()[0].tolist() == [100, 101, 102]

    used = BatchPacker(4)
    used.add([torch.arange(8)], torch.ones(8, dtype=torch.bool))
    list(used.pop_ready())
    empty = used.state_dict()                               # nothing pending
    assert empty["pending"][0].shape[0] == 0
    used.load_state_dict(empty)
    assert used.drain_count() == 0
    assert used.flush() is None
    assert list(used.pop_ready()) == []


# ------------------------------------------------------------------------------ the drop-in

class _Recorder(nn.Module):
    """Records self.training at every forward."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def _vector_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 5))


def _image_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))


def _data(shape, classes, n_batches=12, rows=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n_batches):
        x = torch.randn((rows, *shape), generator=gen)
        y = torch.randint(0, classes, (rows,), generator=gen)
        out.append((x, y, torch.arange(k * rows, (k + 1) * rows)))
    return out


@pytest.mark.parametrize(("make_model", "shape", "classes"),
                         [(_vector_model, (7,), 5), (_image_model, (1, 28, 28), 10)])
def test_dropin_packs_kept_examples_for_any_input_shape(make_model, shape, classes):
    """Drop-in on N×7 vectors and N×1×28×28 images: full batches, kept rows once, in order, rows intact.

    The kept set is checked against a twin LossSelector with the same seed fed the same
    eval-mode losses (the drop-in's selection forward).
    """
    model = make_model().train()
    data = _data(shape, classes)
    sb = SelectiveBackprop(selectivity=0.5, history=256, batch_size=16, seed=3)
    twin = LossSelector(1.0, history=256, seed=3)
    batches, expected = [], []
    for x, y, idx in data:
        model.eval()
        with torch.no_grad():
            losses = nn.functional.cross_entropy(model(x), y, reduction="none")
        model.train()
        mask, _ = twin.select(losses)
        expected.append(idx[mask])
        for batch in sb.select(model, x, y, idx):
            assert len(batch) == 3 and all(t.shape[0] == 16 for t in batch)
            batches.append(batch)
        assert model.training
    rest = sb.flush()
    assert rest is not None and rest[0].shape[0] < 16
    expected = torch.cat(expected)
    got = torch.cat([b[2] for b in batches] + [rest[2]])
    assert torch.equal(got, expected)
    all_x = torch.cat([d[0] for d in data])
    all_y = torch.cat([d[1] for d in data])
    assert torch.equal(torch.cat([b[0] for b in batches] + [rest[0]]), all_x[got])
    assert torch.equal(torch.cat([b[1] for b in batches] + [rest[1]]), all_y[got])
    assert sb.kept == expected.shape[0] and sb.seen == 12 * 50
    assert sb.flush() is None


def _kept_and_twin(sb, twin, model, data):
    """The indices a drop-in SelectiveBackprop keeps over ``data`` (flush included), and those its twin
    LossSelector keeps when fed the same 0/1 losses (1 where y == 1)."""
    expected = torch.cat([idx[twin.select((y == 1).float())[0]] for x, y, idx in data])
    got = [b[2] for x, y, idx in data for b in sb.select(model, x, y, idx)]
    rest = sb.flush()
    return torch.cat(got + ([] if rest is None else [rest[2]])), expected


def test_dropin_uses_custom_loss_fn():
    """A custom per-example loss drives the rule: loss 1 for class 1, 0 otherwise, β = 200.

    Class-1 rows tie with or exceed every history entry → percentile 1 → always kept. Other rows
    have percentile = share of zeros in the window: 1 only while no class-1 row is in it yet (the
    first few rows of the stream), otherwise ≤ 63/64 → P ≤ (63/64)^200 ≈ 0.04, and typically
    ≈ 0.8^200 ≈ 0. The exact kept set equals a twin LossSelector fed the same custom losses.
    """
    calls = []

    def loss_fn(logits, y):
        calls.append(logits.shape)
        return (y == 1).float()

    model = _vector_model()
    data = _data((7,), 5)
    sb = SelectiveBackprop(beta=200.0, history=64, batch_size=8, loss_fn=loss_fn, seed=0, percentile="inclusive")
    twin = LossSelector(200.0, history=64, seed=0, percentile="inclusive")
    got, expected = _kept_and_twin(sb, twin, model, data)
    assert torch.equal(got, expected)
    all_y = torch.cat([d[1] for d in data])
    class1 = torch.nonzero(all_y == 1).flatten()
    assert torch.isin(class1, got).all()                      # every loss-1 row kept
    assert got.shape[0] - class1.shape[0] <= 5                # loss-0 rows: only the stream's first few
    assert len(calls) == len(data) and calls[0] == (50, 5)


def test_dropin_custom_loss_fn_strict_rule():
    """Strict rule, the same 0/1 custom loss, β = 1: loss-0 rows are never kept (nothing is strictly
    below 0: P = 0 from the very first batch); loss-1 rows get P = share of zeros in the window
    (≈ 0.8); the kept set equals a twin LossSelector(strict) fed the same losses."""
    model = _vector_model()
    data = _data((7,), 5)
    sb = SelectiveBackprop(beta=1.0, history=64, batch_size=8, loss_fn=lambda logits, y: (y == 1).float(), seed=0)
    assert sb.percentile == "strict"
    twin = LossSelector(1.0, history=64, seed=0, percentile="strict")
    got, expected = _kept_and_twin(sb, twin, model, data)
    assert torch.equal(got, expected)
    all_y = torch.cat([d[1] for d in data])
    assert bool((all_y[got] == 1).all()) and got.shape[0] > 0


def test_dropin_select_mode_eval_and_train():
    """'eval' runs the selection forward in eval mode and restores train mode; 'train' keeps BN training."""
    rec = _Recorder()
    bn = nn.BatchNorm1d(5)
    model = nn.Sequential(nn.Linear(7, 5), rec, bn)
    x, y = torch.randn(32, 7), torch.randint(0, 5, (32,))

    model.train()
    list(SelectiveBackprop(select_mode="eval", batch_size=4).select(model, x, y))
    assert rec.seen == [False] and model.training and rec.training and bn.training
    assert bn.num_batches_tracked.item() == 0                          # eval BN: running stats untouched

    rec.seen.clear()
    list(SelectiveBackprop(select_mode="train", batch_size=4).select(model, x, y))
    assert rec.seen == [True] and model.training
    assert bn.num_batches_tracked.item() == 1                          # batch statistics were used

    rec.seen.clear()
    model.eval()
    list(SelectiveBackprop(select_mode="train", batch_size=4).select(model, x, y))
    assert rec.seen == [True] and not model.training and not bn.training   # eval mode restored

    with pytest.raises(ConfigError, match=r"strategy\.select_mode"):
        list(SelectiveBackprop(select_mode="bogus").select(model, x, y))


def test_selection_forward_restores_mode_when_loss_fn_fails():
    model = nn.Sequential(nn.Linear(7, 5)).train()

    def broken(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        selection_forward(model, torch.randn(4, 7), torch.zeros(4, dtype=torch.long), broken, "eval")
    assert model.training
    losses, logits = selection_forward(model, torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    assert losses.shape == (4,) and logits.shape == (4, 5) and not losses.requires_grad


def _kept_indices(sb, model, data):
    out = [b[2] for x, y, idx in data for b in sb.select(model, x, y, idx)]
    rest = sb.flush()
    return torch.cat(out + ([] if rest is None else [rest[2]]))


def test_dropin_same_seed_same_kept_set_different_seed_differs():
    model = _vector_model()
    data = _data((7,), 5, n_batches=10, rows=64, seed=1)
    a = _kept_indices(SelectiveBackprop(beta=2.0, batch_size=16, seed=5), model, data)
    b = _kept_indices(SelectiveBackprop(beta=2.0, batch_size=16, seed=5), model, data)
    c = _kept_indices(SelectiveBackprop(beta=2.0, batch_size=16, seed=6), model, data)
    assert torch.equal(a, b)
    # 640 draws, most with 0 < P < 1: two seeds agreeing on all of them is practically impossible
    assert not torch.equal(a, c)


def test_dropin_state_round_trip():
    """state_dict mid-stream (history, generator, pending rows, counts) → a fresh instance continues identically."""
    model = _image_model()
    data = _data((1, 28, 28), 10, n_batches=10, rows=40, seed=2)
    ref = SelectiveBackprop(selectivity=0.25, history=100, batch_size=24, seed=9)
    expected = _kept_indices(ref, model, data)

    first = SelectiveBackprop(selectivity=0.25, history=100, batch_size=24, seed=9)
    head = [b[2] for x, y, idx in data[:5] for b in first.select(model, x, y, idx)]
    state = first.state_dict()
    assert state["packer"]["pending"][0].shape[0] == first.kept - 24 * len(head) > 0
    second = SelectiveBackprop(selectivity=0.25, history=100, batch_size=24, seed=0)
    second.load_state_dict(state)
    assert second.kept == first.kept and second.seen == first.seen == 200
    tail = _kept_indices(second, model, data[5:])
    assert torch.equal(torch.cat(head + [tail]), expected)
    assert second.kept == ref.kept


def test_dropin_beta_selectivity_and_batch_size_validation():
    assert SelectiveBackprop(selectivity=0.25).beta == pytest.approx(3.0)
    assert SelectiveBackprop().beta == 2.0
    with pytest.raises(ConfigError):
        SelectiveBackprop(beta=1.0, selectivity=0.25)
    with pytest.raises(ValueError):
        SelectiveBackprop(batch_size=0)


def test_dropin_reads_counts_immediately_so_flush_is_partial():
    """The drop-in packs with lag 0 on every device (one tiny count read per select() call):
    each full batch is yielded by the select() call that completed it, flush() is partial."""
    model = _vector_model()
    data = _data((7,), 5, n_batches=8, rows=64, seed=4)
    sb = SelectiveBackprop(selectivity=0.5, batch_size=16, seed=1)
    got = []
    for x, y, idx in data:
        got += [b[2] for b in sb.select(model, x, y, idx)]
        assert sb.packer.drain_count() < 16                 # nothing full left behind after a call
    rest = sb.flush()
    kept = torch.cat(got + ([] if rest is None else [rest[2]]))
    assert kept.shape[0] == sb.kept and torch.equal(kept, kept.sort().values)
    assert rest is None or rest[0].shape[0] < 16
