"""Issue 11: the authors' selection rules (SelectiveBackprop lib/calculators.py, lib/hist.py,
lib/selectors.py, lib/fp_selectors.py, lib/backproppers.py) and Kath18's cost model and τ (the
authors' KathTrainer in lib/trainer.py).

The authors' percentile rule is ported here by hand, independently of the library, as the reference.
Statistical bounds are 5σ binomial with stated allowances; every random quantity is seeded.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import deque

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from selective_backprop import SelectiveBackprop
from selective_backprop.sources.source import TorchSource
from selective_backprop.strategies import Context, Counters, build_strategy
from selective_backprop.strategies.kath18 import Kath18
from selective_backprop.strategies.stale_sb import StaleSB
from selective_backprop.timing import PhaseTimer
from selective_backprop.errors import ConfigError
from selective_backprop.selection import rules
from selective_backprop.selection.selector import LossSelector
from datagen import SyntheticImages

CPU = torch.device("cpu")


class AuthorsRelativeCalculator:
    """BatchedRelativeProbabilityCalculator + UnboundedHistogram, ported: append the whole batch to a
    deque(maxlen=R), then percentile = 100 · count(h < L) / len, P = max(floor, (pct/100)^β)."""

    def __init__(self, history: int, beta: float, sampling_min: float = 0.0):
        self.window: deque = deque(maxlen=history)
        self.beta = beta
        self.sampling_min = sampling_min

    def percentile_of_score(self, score: float) -> float:
        return sum(1 for h in self.window if h < score) * 100.0 / len(self.window)

    def get_probability(self, losses: list[float]) -> list[float]:
        for loss in losses:
            self.window.append(loss)
        return [max(self.sampling_min, math.pow(self.percentile_of_score(x) / 100.0, self.beta)) for x in losses]


# ------------------------------------------------------------------------------ the tied-loss stream

ZERO_SHARE = 0.4


def _tied_stream(n_batches: int, batch: int, seed: int) -> list[torch.Tensor]:
    """40 % exactly 0 (float32 cross-entropy past a margin of ~17), 60 % Exponential(1)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        losses = torch.empty(batch).exponential_(1.0, generator=gen)
        losses[torch.rand(batch, generator=gen) < ZERO_SHARE] = 0.0
        out.append(losses)
    return out


def _loss_is_input(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The drop-in's loss_fn: the 'model' is the identity, column 0 of x is the example's loss."""
    return logits[:, 0]


def _dropin_kept(stream: list[torch.Tensor], percentile: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream the losses through SelectiveBackprop(β=2, R=1024, b=128); (kept losses, kept indices)."""
    sb = SelectiveBackprop(beta=2.0, history=1024, batch_size=128, seed=seed, loss_fn=_loss_is_input,
                           percentile=percentile)
    model, kept = nn.Identity(), []
    start = 0
    for losses in stream:
        idx = torch.arange(start, start + losses.shape[0])
        start += losses.shape[0]
        kept += [(b[0][:, 0], b[2]) for b in sb.select(model, losses[:, None], torch.zeros_like(idx), idx)]
    rest = sb.flush()
    if rest is not None:
        kept.append((rest[0][:, 0], rest[2]))
    assert sb.kept == sum(k[1].shape[0] for k in kept)
    return torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])


def test_strict_rule_equals_authors_port_on_tied_stream():
    """LossSelector(strict).probabilities == the ported calculator, batch by batch, ties included."""
    stream = _tied_stream(30, 128, seed=1)
    ours = LossSelector(2.0, history=1024, percentile="strict")
    theirs = AuthorsRelativeCalculator(1024, 2.0)
    for losses in stream:
        expected = torch.tensor(theirs.get_probability(losses.tolist()), dtype=torch.float32)
        torch.testing.assert_close(ours.probabilities(losses), expected, rtol=1e-5, atol=1e-6)
    assert ours.filled == 1024


def test_tied_stream_dropin_never_keeps_zero_losses_and_keeps_the_authors_share():
    """Through the drop-in API (strict, default): no exact-zero loss is ever kept (nothing is strictly
    below 0, so P = 0 from the first batch on), and the kept share matches the authors' rule:
    |kept − Σ P| < 5·sqrt(Σ P(1−P)) with P from the ported calculator on the same stream.
    """
    stream = _tied_stream(300, 128, seed=2)
    kept_losses, kept_idx = _dropin_kept(stream, "strict")
    assert not bool((kept_losses == 0).any())
    flat = torch.cat(stream)
    assert torch.equal(flat[kept_idx], kept_losses)
    port = AuthorsRelativeCalculator(1024, 2.0)
    probs = torch.tensor([p for losses in stream for p in port.get_probability(losses.tolist())])
    assert float(probs[flat == 0].max()) == 0.0
    expected, sigma = float(probs.sum()), math.sqrt(float((probs * (1 - probs)).sum()))
    assert abs(kept_idx.shape[0] - expected) < 5 * sigma, (kept_idx.shape[0], expected, sigma)


def test_tied_stream_kept_share_strict_vs_inclusive():
    """β = 2, 40 % exact zeros, warm history. Strict: zeros get P = 0, a positive loss at quantile u of
    the positives gets ((0.4 + 0.6u))^2, so share = 0.6 · (1 − 0.4³)/(3 · 0.6) = 0.312. Inclusive
    (the old rule): zeros get ≈ 0.4² (share of zeros ≤ 0 in the window) → + 0.4 · 0.16 = 0.064, share
    ≈ 0.376: ≈ 21 % more backprops. Tolerance per share: 5σ binomial (n = 38 400) + 0.01 for the
    window's sampling noise (the zero share of a 1024-window has sd 0.015; P is smooth in it)."""
    stream = _tied_stream(300, 128, seed=3)
    n = sum(s.shape[0] for s in stream)
    shares = {rule: _dropin_kept(stream, rule)[1].shape[0] / n for rule in ("strict", "inclusive")}
    for rule, theory in (("strict", 0.312), ("inclusive", 0.376)):
        tol = 5 * math.sqrt(theory * (1 - theory) / n) + 0.01
        assert abs(shares[rule] - theory) < tol, (rule, shares[rule], theory)
    assert 1.12 < shares["inclusive"] / shares["strict"] < 1.30, shares


def test_inclusive_reproduces_the_pre_issue_11_numbers():
    """percentile=inclusive (and prime_epochs=0 for the strategy) gives the very same kept examples as
    the code before issue 11 (commit ad1b4f1): count and SHA-256 of the kept index lists were
    produced by that code on these seeded streams (CPU generators)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5))
    gen = torch.Generator().manual_seed(1)
    sb = SelectiveBackprop(beta=2.0, history=100, batch_size=16, seed=3, percentile="inclusive")
    kept = []
    for i in range(20):
        x, y = torch.randn(50, 7, generator=gen), torch.randint(0, 5, (50,), generator=gen)
        kept += [b[2] for b in sb.select(model, x, y, torch.arange(i * 50, (i + 1) * 50))]
    kept = torch.cat(kept).tolist()
    assert (len(kept), hashlib.sha256(str(kept).encode()).hexdigest()[:16]) == (336, "e3ab2b8eb1f51327")

    ctx = _context(SyntheticImages(300), 32)
    strategy = build_strategy(OmegaConf.create({"name": "sb", "history": 128, "select_batch_size": 40,
                                                "percentile": "inclusive", "prime_epochs": 0}), 32, 5)
    got = torch.cat([b.idx for e in range(3) for b in strategy.epoch(e, ctx)]).tolist()
    assert (len(got), hashlib.sha256(str(got).encode()).hexdigest()[:16]) == (320, "01a78ebfa7395849")


# ------------------------------------------------------------------------------ strategies, unit level



def _context(dataset: Dataset, batch_size: int) -> Context:
    timer = PhaseTimer(CPU)
    source = TorchSource(dataset, CPU, seed=0, timer=timer)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    return Context(model, source, timer, Counters(), batch_size, CPU)


def _strategy(name: str, batch_size: int, **cfg):
    return build_strategy(OmegaConf.create({"name": name, **cfg}), batch_size, 0)


@pytest.mark.parametrize("name", ["sb", "stale_sb"])
def test_priming_epoch_backprops_every_example(name):
    """Epoch 0 (prime_epochs = 1, default): every example kept and trained, each one selection-forwarded,
    the history left empty; epoch 1 selects (fewer kept, history filled; Stale-SB n = 2: from the
    stored losses, without selection forwards)."""
    data = SyntheticImages(200)
    ctx = _context(data, 16)
    strategy = _strategy(name, 16)
    assert strategy.prime_epochs == 1 and strategy.percentile == "strict"
    idx = torch.cat([b.idx for b in strategy.epoch(0, ctx)])
    assert torch.equal(idx.sort().values, ctx.source.permutation(0)[:192].sort().values)  # 12 full batches
    assert ctx.counters.considered == 200 and ctx.counters.select_forwarded == 200
    assert int(ctx.counters.kept) == 200 and strategy.selector.filled == 0
    list(strategy.epoch(1, ctx))
    assert ctx.counters.select_forwarded == (400 if name == "sb" else 200) and strategy.selector.filled == 200
    assert int(ctx.counters.kept) < 400


def test_prime_epochs_zero_selects_from_the_start_and_validation():
    ctx = _context(SyntheticImages(200), 16)
    strategy = _strategy("sb", 16, prime_epochs=0)
    list(strategy.epoch(0, ctx))
    assert int(ctx.counters.kept) < 200 and strategy.selector.filled == 200
    for key, value in (("prime_epochs", -1), ("prime_epochs", 1.5), ("prime_epochs", True), ("percentile", "exact")):
        for name in ("sb", "stale_sb"):
            with pytest.raises(ConfigError, match=rf"strategy\.{key}="):
                _strategy(name, 16, **{key: value})


def test_stale_sb_stored_losses_move_when_trained_and_are_reranked():
    """Stale-SB n = 2 on 200 examples, b = 16.

    Epoch 0 (priming, a selection epoch): the table holds each example's selection loss, then the
    training loss of each trained example replaces it (here 100 + index, fed as the trainer would).
    Epoch 1 (stale): no selection forward; the stored losses are pushed into the history and ranked
    (strict), the kept set is exactly the replay of that rule, and the lowest stored loss is never
    kept. The table survives state_dict/load_state_dict.
    """
    data = SyntheticImages(200)
    ctx = _context(data, 16)
    stale = _strategy("stale_sb", 16, staleness=2)
    assert isinstance(stale, StaleSB)
    epoch0 = stale.epoch(0, ctx)
    first = next(epoch0)
    with torch.no_grad():
        selection = nn.functional.cross_entropy(ctx.model.eval()(data.x), data.y, reduction="none")
    seen = ctx.source.permutation(0)[:16]
    torch.testing.assert_close(stale.loss_table[seen], selection[seen])
    trained = [first] + list(epoch0)
    for batch in trained:
        stale.after_train_step(batch, 100.0 + batch.idx.float(), torch.zeros(batch.idx.shape[0], 4))
    trained_idx = torch.cat([b.idx for b in trained])
    assert torch.equal(stale.loss_table[trained_idx], 100.0 + trained_idx.float())   # moved
    untrained = torch.ones(200, dtype=torch.bool)
    untrained[trained_idx] = False                                                    # the carried 8
    torch.testing.assert_close(stale.loss_table[untrained], selection[untrained])

    table, replay = stale.loss_table.clone(), copy.deepcopy(stale.selector)
    forwards = ctx.counters.select_forwarded
    carried = stale.packer.state_dict()["pending"][0].clone()      # the 8 left over from epoch 0
    chosen = torch.cat([b.idx for b in stale.epoch(1, ctx)])
    assert ctx.counters.select_forwarded == forwards                                  # stale: none
    order = ctx.source.permutation(1)
    masks = [rules.draw(replay.probabilities(table[c]), replay.generator.get(CPU)) for c in order.split(16)]
    expected = torch.cat([carried, order[torch.cat(masks)]])
    assert torch.equal(chosen, expected[:chosen.shape[0]])
    assert stale.selector.filled == 200
    assert int(table.argmin()) not in order[torch.cat(masks)].tolist()                # P = 0: lowest

    fresh = _strategy("stale_sb", 16, staleness=2)
    fresh.load_state_dict(copy.deepcopy(stale.state_dict()))
    assert torch.equal(fresh.loss_table, stale.loss_table)


def test_stale_sb_selection_epochs_follow_the_authors_counter():
    """Selection epochs: epoch < prime_epochs or (epoch − max(prime_epochs − 1, 0)) % n == 0."""
    def epochs(**cfg):
        s = _strategy("stale_sb", 16, **cfg)
        return [e for e in range(8) if s.selection_epoch(e)]
    assert epochs(staleness=2) == [0, 2, 4, 6]
    assert epochs(staleness=3) == [0, 3, 6]
    assert epochs(staleness=2, prime_epochs=2) == [0, 1, 3, 5, 7]
    assert epochs(staleness=3, prime_epochs=0) == [0, 3, 6]
    assert epochs(staleness=1) == list(range(8))


# ------------------------------------------------------------------------------ Kath18's cost model

def _kath18(**cfg) -> Kath18:
    strategy = _strategy("kath18", 16, selectivity=0.5, **cfg)
    assert isinstance(strategy, Kath18)
    return strategy


def _count_gate_reads(monkeypatch, k18: Kath18) -> list[int]:
    reads = []
    original = Kath18.gate_open

    def counted(self):
        reads.append(1)
        return original(self)
    monkeypatch.setattr(Kath18, "gate_open", counted)
    return reads


def test_kath18_gate_read_once_per_epoch_and_holds(monkeypatch):
    """gate_every=epoch (default): one gate read per epoch. τ far above τ_th at the epoch's start keeps
    every batch of that epoch importance-sampled even after τ is forced below τ_th mid-epoch."""
    ctx = _context(SyntheticImages(200), 16)
    k18 = _kath18()
    assert k18.gate_every == "epoch" and k18.score_while_closed is True
    reads = _count_gate_reads(monkeypatch, k18)
    k18._update_tau(torch.zeros(10_000).index_fill_(0, torch.tensor([0]), 1.0))   # τ = 10 > τ_th
    tags = []
    for batch in k18.epoch(0, ctx):
        tags.append(batch.tag)
        k18.tau = torch.zeros(())                               # the host still sees the old τ ...
        k18._tau_reader.reset(0)                                # ... unless re-read: now closed
    assert len(reads) == 1 and tags and set(tags) == {"importance"}
    list(k18.epoch(1, ctx))
    assert len(reads) == 2


def test_kath18_gate_every_step_reads_before_each_step(monkeypatch):
    ctx = _context(SyntheticImages(200), 16)
    k18 = _kath18(gate_every="step", score_while_closed=False)
    reads = _count_gate_reads(monkeypatch, k18)
    batches = list(k18.epoch(0, ctx))
    assert len(reads) == len(batches) + 1                       # + the read that finds the stream empty


def test_kath18_scores_closed_gate_batches_and_tau_learns_from_training_losses():
    """Defaults (the authors' KathTrainer.train_all, lib/trainer.py): a closed-gate epoch of 200
    examples runs the scoring forward on all 200 (select_forwarded, timed as select_forward) but τ
    does not learn from it; τ learns from the training forward's losses (after_train_step)."""
    ctx = _context(SyntheticImages(200), 16)
    k18 = _kath18()
    assert (k18.score_while_closed, k18.closed_tau) == (True, "train")
    batches = list(k18.epoch(0, ctx))
    assert all(b.tag == "uniform_scored" for b in batches) and sum(b.idx.shape[0] for b in batches) == 200
    assert ctx.counters.select_forwarded == 200 and ctx.counters.considered == 200
    assert ctx.timer.totals["select_forward"] > 0
    assert k18.tau is None                                      # the scoring losses fed nothing
    k18.after_train_step(batches[0], torch.tensor([1.0] + [0.0] * 15), torch.zeros(16, 4))
    assert float(k18.tau) == pytest.approx(0.1 * 4.0, rel=1e-6)   # est sqrt(16) = 4, from the training losses


def test_kath18_closed_tau_score_learns_from_the_scoring_forward():
    """closed_tau: score: τ learns from the eval-mode scoring losses and the training losses do not
    update it again; score_while_closed false: no scoring forward at all (idiap's cost)."""
    ctx = _context(SyntheticImages(200), 16)
    k18 = _kath18(closed_tau="score")
    batches = list(k18.epoch(0, ctx))
    assert ctx.counters.select_forwarded == 200 and k18.tau is not None
    tau = float(k18.tau)
    k18.after_train_step(batches[0], torch.ones(16), torch.zeros(16, 4))
    assert float(k18.tau) == tau

    ctx_old = _context(SyntheticImages(200), 16)
    old = _kath18(score_while_closed=False)
    list(old.epoch(0, ctx_old))
    assert ctx_old.counters.select_forwarded == 0 and old.tau is None


def test_kath18_new_keys_validated():
    with pytest.raises(ConfigError, match=r"strategy\.gate_every='batch'"):
        _kath18(gate_every="batch")
    with pytest.raises(ConfigError, match=r"strategy\.score_while_closed"):
        _kath18(score_while_closed="yes")
    with pytest.raises(ConfigError, match=r"^strategy\.closed_tau='loss': not accepted; accepted: train \| score$"):
        _kath18(closed_tau="loss")
    with pytest.raises(ConfigError, match=r"^strategy\.closed_tau='score': .*score_while_closed=false"):
        _kath18(closed_tau="score", score_while_closed=False)
    with pytest.raises(ConfigError, match=r"^strategy\.sampling='uniform': not accepted; accepted: shuffle \| replacement$"):
        _kath18(sampling="uniform")
