"""Behavioural tests of the strategies: Kath18's rules and gate, Stale-SB, Uniform, and end-to-end counters.

End-to-end runs use the real engine on the real Fashion-MNIST 512-example subset (tiny_config:
batch 64, resnet8 width 8), each run trained once per module and shared by the tests that read it.
The shared bundle's test set is cut to 256 images: evaluation does not touch any counter checked
here and would otherwise dominate the runtime. Statistical bounds are 5σ binomial (two-sided
probability ≈ 6e-7 per check) plus stated allowances; every run is seeded.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

from conftest import compose_config, run_tiny, tiny_config
from selective_backprop.sources.source import TorchSource
from selective_backprop.strategies import Context, Counters, build_strategy
from selective_backprop.strategies.kath18 import Kath18
from selective_backprop.strategies.stale_sb import StaleSB
from selective_backprop.strategies.uniform import Uniform
from selective_backprop.timing import PhaseTimer
from selective_backprop.errors import ConfigError
from selective_backprop.selection import rules
from selective_backprop.selection.selector import SeededGenerator
from datagen import SyntheticImages

N = 512        # tiny_config's subset
B = 64         # tiny_config's batch size
CPU = torch.device("cpu")



# ------------------------------------------------------------------------------ Kath18: pure rules

def test_tau_estimate_hand_values():
    """τ = 1/sqrt(1 − ‖g−u‖²/‖g‖²), g = s/Σs, u = 1/B.

    [1,1,1,1]: g = u → ‖g−u‖² = 0 → τ = 1.
    [1,0,0,0]: g = (1,0,0,0), u = 1/4: ‖g−u‖² = 0.75² + 3·0.25² = 0.75, ‖g‖² = 1 → 1/sqrt(0.25) = 2 = sqrt(4).
    [3,1]:     g = (0.75, 0.25), u = 0.5: ‖g−u‖² = 0.0625 + 0.0625 = 0.125, ‖g‖² = 0.5625 + 0.0625 = 0.625
               → ratio 0.2 → τ = 1/sqrt(0.8) = 1.118034 = sqrt(2 · 0.625).
    All-zero scores: g = u by convention → τ = 1.
    """
    assert float(rules.tau_estimate(torch.tensor([1.0, 1, 1, 1]))) == pytest.approx(1.0, abs=1e-6)
    assert float(rules.tau_estimate(torch.tensor([1.0, 0, 0, 0]))) == pytest.approx(2.0, rel=1e-6)
    assert float(rules.tau_estimate(torch.tensor([3.0, 1.0]))) == pytest.approx(1 / math.sqrt(0.8), rel=1e-6)
    assert float(rules.tau_estimate(torch.tensor([3.0, 1.0]))) == pytest.approx(math.sqrt(1.25), rel=1e-6)
    assert float(rules.tau_estimate(torch.zeros(5))) == pytest.approx(1.0, abs=1e-6)


def test_tau_estimate_closed_form():
    """‖g−u‖² = Σg² − 1/B (as Σg = 1), so τ = 1/sqrt(1/(BΣg²)) = sqrt(B·Σg²); scale-invariant."""
    gen = torch.Generator().manual_seed(0)
    for size in (2, 7, 128, 384):
        scores = torch.rand(size, generator=gen) ** 3
        g = scores.double() / scores.double().sum()
        closed = math.sqrt(size * float((g ** 2).sum()))
        assert float(rules.tau_estimate(scores)) == pytest.approx(closed, rel=1e-5)
        assert float(rules.tau_estimate(scores * 37.0)) == pytest.approx(closed, rel=1e-5)
    assert float(rules.tau_estimate(torch.zeros(384).index_fill_(0, torch.tensor([3]), 2.0))) == \
        pytest.approx(math.sqrt(384), rel=1e-5)


def test_tau_threshold():
    """τ_th = (B + 3b)/(3b): (384 + 384)/384 = 2.0 for b = 128, s = 1/3."""
    assert rules.tau_threshold(384, 128) == 2.0
    assert rules.tau_threshold(192, 64) == 2.0
    assert rules.tau_threshold(128, 64) == pytest.approx((128 + 192) / 192)


def test_importance_sample_frequencies():
    """Draws with replacement, p ∝ score: chi-square over 200 000 draws, zero scores never drawn."""
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    gen = torch.Generator().manual_seed(1)
    k = 200_000
    positions, p = rules.importance_sample(scores, k, gen)
    assert positions.shape == (k,) and p.shape == (k,)
    expected_p = scores / scores.sum()
    torch.testing.assert_close(p, expected_p[positions])
    counts = torch.bincount(positions, minlength=7).double()
    assert counts[0] == 0 and counts[5] == 0
    nonzero = scores > 0
    observed, expected = counts[nonzero].numpy(), (expected_p[nonzero].double() * k).numpy()
    # 5 categories → 4 dof; p-value below 1e-6 would be a ~5σ event
    assert stats.chisquare(observed, expected).pvalue > 1e-6
    # and per category within 5σ binomial
    sigma = torch.sqrt(torch.tensor(expected) * (1 - expected_p[nonzero].double()))
    assert torch.all((torch.tensor(observed) - torch.tensor(expected)).abs() < 5 * sigma)
    # with replacement: more draws than items is fine, and repeats occur
    few, _ = rules.importance_sample(torch.tensor([1.0, 1.0]), 50, gen)
    assert few.shape == (50,) and set(few.tolist()) == {0, 1}
    # all-zero scores fall back to uniform
    _, p0 = rules.importance_sample(torch.zeros(4), 8, gen)
    torch.testing.assert_close(p0, torch.full((8,), 0.25))


def test_gradient_norm_scores():
    """‖softmax − onehot‖: 2 classes, logits (0, 0), y = 0 → ‖(−0.5, 0.5)‖ = sqrt(0.5); confident-correct → 0."""
    logits = torch.tensor([[0.0, 0.0], [50.0, -50.0]])
    got = rules.gradient_norm_scores(logits, torch.tensor([0, 0]))
    torch.testing.assert_close(got, torch.tensor([math.sqrt(0.5), 0.0]), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ Kath18: the strategy

def _kath18(batch_size=128, **overrides) -> Kath18:
    cfg = compose_config(["strategy=kath18", *[f"strategy.{k}={v}" for k, v in overrides.items()]]).strategy
    strategy = build_strategy(cfg, batch_size, 0)
    assert isinstance(strategy, Kath18)
    return strategy


def test_kath18_gate_opens_and_closes_with_ema():
    """Peaked scores open the gate, uniform scores close it again (not sticky); τ is an EMA from 0.

    b = 128, s = 1/3 → B = 384, τ_th = 2. One-hot scores over 384: est = sqrt(384) ≈ 19.60.
    τ_1 = 0.1·19.60 = 1.96 ≤ 2 (closed); τ_2 = 0.9·1.96 + 1.96 = 3.72 > 2 (open). Uniform scores
    (est = 1): τ_k = 1 + (3.72 − 1)·0.9^k falls below 2 after 10 updates (0.9^10 = 0.349 < 0.367).
    """
    k18 = _kath18()
    assert k18.presample == 384 and k18.tau_th == 2.0
    assert not k18.gate_open()                           # no estimate yet: plain minibatches
    peaked = torch.zeros(384)
    peaked[17] = 5.0
    uniform = torch.full((384,), 0.3)
    tau = 0.0                                            # the reference's EMA starts at 0
    trace = []
    for scores in [peaked, peaked] + [uniform] * 12:
        est = float(rules.tau_estimate(scores))
        tau = 0.9 * tau + 0.1 * est
        k18._update_tau(scores)
        assert float(k18.tau) == pytest.approx(tau, rel=1e-5)
        trace.append(k18.gate_open())
        assert k18.gate_open() == (tau > 2.0)
    assert trace[:2] == [False, True]
    assert trace[2:11] == [True] * 9 and trace[11] is False   # 9 uniform updates still open, the 10th closes
    assert trace[12:] == [False, False]
    # and it reopens: non-sticky in both directions
    for _ in range(3):
        k18._update_tau(peaked)
    assert k18.gate_open()


def test_kath18_resume_restores_the_one_late_gate_reading(monkeypatch):
    """On CUDA the gate reads τ one update late (LaggedReader, lag 1). A checkpoint keeps the τ the gate
    sees as well as τ, so a resumed Kath18 reads the same values, and decides the same, as the
    uninterrupted one from then on. Lag 1 is forced on the CPU here to stand in for CUDA."""
    import selective_backprop.strategies.kath18 as kath18_module
    from selective_backprop.selection.readback import LaggedReader

    monkeypatch.setattr(kath18_module, "LaggedReader", lambda device, lag=None: LaggedReader(device, lag=1))
    gen = torch.Generator().manual_seed(3)
    stream = [torch.rand(384, generator=gen) ** 8 for _ in range(12)]
    running = _kath18()
    for scores in stream[:6]:
        running._update_tau(scores)
    state = copy.deepcopy(running.state_dict())
    assert state["tau_seen"] != pytest.approx(state["tau"])          # the gate's view is one update old
    resumed = _kath18()
    resumed.load_state_dict(state)
    for scores in stream[6:]:
        assert resumed._tau_reader.value == running._tau_reader.value
        assert resumed.gate_open() == running.gate_open()
        running._update_tau(scores)
        resumed._update_tau(scores)
    assert float(resumed.tau) == float(running.tau)
    old = {k: v for k, v in state.items() if k != "tau_seen"}       # a checkpoint written before tau_seen
    legacy = _kath18()
    legacy.load_state_dict(old)
    legacy._update_tau(stream[6])
    assert legacy._tau_reader.value == pytest.approx(state["tau"])


def test_kath18_momentum_is_configurable():
    k18 = _kath18(tau_momentum=0.5)
    k18._update_tau(torch.tensor([1.0, 0, 0, 0]))            # est 2 → τ = 0.5·0 + 0.5·2 = 1
    assert float(k18.tau) == pytest.approx(1.0, rel=1e-6)


def test_kath18_rejects_selectivity_one():
    with pytest.raises(ConfigError, match="presample"):
        _kath18(selectivity=1.0)
    with pytest.raises(ConfigError, match=r"strategy\.selectivity"):
        _kath18(selectivity=1.5)
    with pytest.raises(ConfigError, match=r"strategy\.score"):
        _kath18(score="entropy")




def _context(dataset, batch_size, model=None) -> Context:
    timer = PhaseTimer(CPU)
    source = TorchSource(dataset, CPU, seed=0, timer=timer)
    if model is None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    return Context(model, source, timer, Counters(), batch_size, CPU)


@pytest.mark.parametrize("reweight", [False, True])
def test_kath18_importance_batch_weights(reweight):
    """Gate open: presample B = b/s, score in eval mode, draw b ∝ score; weight = 1/(B·p_i) iff reweight.

    b = 8, s = 1/4 → B = 32. p_i is recomputed from the model's losses on the presampled indices.
    """
    data = SyntheticImages(200)
    ctx = _context(data, 8)
    k18 = _kath18(batch_size=8, selectivity=0.25, reweight=str(reweight).lower())
    assert k18.presample == 32
    k18._update_tau(torch.zeros(10_000).index_fill_(0, torch.tensor([0]), 1.0))   # est 100 → τ = 10 > τ_th
    assert k18.gate_open()
    epoch = k18.epoch(0, ctx)
    batch = next(epoch)
    epoch.close()
    assert batch.tag == "importance" and batch.x.shape[0] == 8
    assert torch.equal(batch.x, data.x[batch.idx]) and torch.equal(batch.y, data.y[batch.idx])
    chunk = ctx.source.permutation(0)[:32]                       # sampling: shuffle (default)
    assert torch.isin(batch.idx, chunk).all()
    snap = ctx.counters.snapshot()
    assert snap["considered"] == 32 and snap["select_forwarded"] == 32 and snap["kept"] == 8
    assert k18.importance_steps == 1
    with torch.no_grad():
        losses = nn.functional.cross_entropy(ctx.model.eval()(data.x[chunk]), data.y[chunk], reduction="none")
    p_of = {int(i): float(l / losses.sum()) for i, l in zip(chunk, losses)}
    if reweight:
        expected = torch.tensor([1.0 / (32 * p_of[int(i)]) for i in batch.idx])
        torch.testing.assert_close(batch.weight, expected, rtol=1e-4, atol=0)
    else:
        assert batch.weight is None


@pytest.mark.parametrize("sampling", ["shuffle", "replacement"])
def test_kath18_closed_gate_gives_uniform_batches_and_learns_tau_from_training_losses(sampling):
    """No scoring forward (score_while_closed false, idiap's cost): minibatches of b from the epoch's
    stream (shuffle: one permutation; replacement: N uniform draws), τ from the training losses."""
    data = SyntheticImages(100)
    ctx = _context(data, 16)
    k18 = _kath18(batch_size=16, selectivity=0.5, gate_every="step", score_while_closed="false", sampling=sampling)
    batches = list(k18.epoch(0, ctx))
    assert [b.x.shape[0] for b in batches] == [16] * 6 + [4]
    assert all(b.tag == "uniform" and b.weight is None for b in batches)
    stream = ctx.source.permutation(0) if sampling == "shuffle" else ctx.source.with_replacement(0, 100)
    assert torch.equal(torch.cat([b.idx for b in batches]), stream)
    assert ctx.counters.considered == 100 and ctx.counters.select_forwarded == 0
    assert k18.tau is None
    k18.after_train_step(batches[0], torch.tensor([1.0] + [0.0] * 15), torch.zeros(16, 4))
    assert float(k18.tau) == pytest.approx(0.1 * 4.0, rel=1e-6)       # est sqrt(16) = 4


@pytest.mark.parametrize("gate_every", ["epoch", "step"])
def test_kath18_closed_gate_epochs_visit_every_example_exactly_once(gate_every):
    """sampling: shuffle (default, the authors' shuffled DataLoader): 5 closed-gate epochs of 103
    examples each train every example exactly once, in a different order each epoch; with
    replacement (idiap's UniformSampler) an epoch of N draws leaves some examples out."""
    n = 103
    data = SyntheticImages(n)
    ctx = _context(data, 16)
    k18 = _kath18(batch_size=16, selectivity=0.5, gate_every=gate_every)
    assert k18.sampling == "shuffle"
    orders = []
    for epoch in range(5):
        batches = list(k18.epoch(epoch, ctx))
        assert not k18.gate_open() and {b.tag for b in batches} == {"uniform_scored"}
        idx = torch.cat([b.idx for b in batches])
        assert torch.equal(idx.sort().values, torch.arange(n))
        orders.append(idx.tolist())
    assert len({tuple(o) for o in orders}) == 5
    ctx_r = _context(data, 16)
    drawn = torch.cat([b.idx for b in _kath18(batch_size=16, selectivity=0.5, sampling="replacement").epoch(0, ctx_r)])
    assert drawn.shape[0] == n and drawn.unique().shape[0] < n


def test_kath18_open_gate_epoch_scores_every_example_once():
    """Open gate with sampling: shuffle: the epoch's presample chunks of B are consecutive slices of
    one permutation, so every example is scored exactly once per epoch (the authors' pools)."""
    data = SyntheticImages(100)
    ctx = _context(data, 8)
    k18 = _kath18(batch_size=8, selectivity=0.25)
    k18._update_tau(torch.zeros(10_000).index_fill_(0, torch.tensor([0]), 1.0))   # τ = 10 > τ_th
    batches = list(k18.epoch(0, ctx))
    assert {b.tag for b in batches} == {"importance"} and len(batches) == 4        # chunks 32, 32, 32, 4
    assert ctx.counters.select_forwarded == 100 and ctx.counters.considered == 100
    order = ctx.source.permutation(0)
    for i, b in enumerate(batches):
        assert torch.isin(b.idx, order[32 * i:32 * (i + 1)]).all()


# ------------------------------------------------------------------------------ Uniform and Stale-SB units

def test_uniform_never_looks_at_the_model_and_keeps_share_s():
    """Uniform keeps each example with probability s without any forward (the model raises if called).

    10 epochs × 400 examples, s = 0.3: kept share within 5σ binomial; the two label halves are
    kept at the same rate (independent of anything about the example), each within 5σ.
    """
    class Forbidden(nn.Module):
        def forward(self, x):
            raise AssertionError("Uniform must not run a selection forward")

    data = SyntheticImages(400)
    ctx = _context(data, 32, model=Forbidden())
    uni = build_strategy(OmegaConf.create({"name": "uniform", "selectivity": 0.3}), 32, 0)
    assert isinstance(uni, Uniform) and uni.params() == {"beta": pytest.approx(1 / 0.3 - 1), "selectivity": 0.3}
    kept = []
    for epoch in range(10):
        for batch in uni.epoch(epoch, ctx):
            assert batch.x.shape[0] == 32
            assert torch.equal(batch.x, data.x[batch.idx])
            kept.append(batch.idx)
    kept = torch.cat(kept)
    n, s = 4000, 0.3
    total = int(ctx.counters.kept)
    assert ctx.counters.considered == n and ctx.counters.select_forwarded == 0
    assert abs(total / n - s) < 5 * math.sqrt(s * (1 - s) / n)
    assert 0 <= total - kept.shape[0] < 32                                 # carried partial batch
    low = data.y[kept] < 2
    n_low = int((data.y < 2).sum()) * 10
    for count, size in ((int(low.sum()), n_low), (int((~low).sum()), n - n_low)):
        # each half: kept/size ≈ s; the < 32 rows still queued only lower the count
        assert abs(count / size - s) < 5 * math.sqrt(s * (1 - s) / size) + 32 / size


@pytest.mark.parametrize("value", ["0", "1.5", "-2"])
def test_stale_sb_rejects_bad_staleness(value):
    cfg = compose_config(["strategy=stale_sb", f"strategy.staleness={value}"]).strategy
    with pytest.raises(ConfigError, match=r"strategy\.staleness"):
        build_strategy(cfg, B, 0)


def test_build_strategy_unknown_name():
    with pytest.raises(ConfigError, match=r"strategy\.name"):
        build_strategy(OmegaConf.create({"name": "oracle"}), B, 0)


def test_stale_sb_staleness_default_and_params():
    """Default n = 2 (the authors' runs; issue 11 changed it from 3), n = 3 one override away."""
    strategy = build_strategy(compose_config(["strategy=stale_sb"]).strategy, B, 0)
    assert isinstance(strategy, StaleSB) and strategy.staleness == 2
    assert strategy.params()["staleness"] == 2 and strategy.params()["beta"] == 2.0
    assert strategy.params()["percentile"] == "strict" and strategy.params()["prime_epochs"] == 1
    three = build_strategy(compose_config(["strategy=stale_sb", "strategy.staleness=3"]).strategy, B, 0)
    assert three.staleness == 3


# ------------------------------------------------------------------------------ end-to-end runs

COMMON = ["train.tensorboard=false"]
RUNS = {
    "traditional": ["strategy=traditional", "train.max_epochs=1"],
    "sb": ["strategy=sb", "train.max_epochs=2"],
    # frozen weights (lr 1e-9: the config refuses 0) and batch-statistics BN in the selection
    # forward make the loss stream stationary, so the kept share must be s; while the model
    # trains, new losses rank below the history's older ones and the share drops below s
    "sb_frozen": ["strategy=sb", "train.max_epochs=4", "optimizer.lr=1e-9", "strategy.select_mode=train",
                  "strategy.prime_epochs=0", "train.diverge_factor=null"],
    "stale1": ["strategy=stale_sb", "strategy.staleness=1", "train.max_epochs=2"],
    "kath18": ["strategy=kath18", "train.max_epochs=2"],
    "uniform": ["strategy=uniform", "strategy.selectivity=0.5", "train.max_epochs=4"],
}


@pytest.fixture(scope="module")
def small_bundle(fmnist_bundle):
    """The shared real Fashion-MNIST bundle (512 train) with the test set cut to 256 images."""
    test = fmnist_bundle.test
    return dataclasses.replace(fmnist_bundle, test=type(test)(test.images[:256], test.targets[:256], test.transform))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist_root, small_bundle):
    """run(name) → (trainer, summary), each configuration trained once per module."""
    cache: dict = {}

    def run(name: str):
        if name not in cache:
            cache[name] = run_tiny(tmp_path_factory.mktemp(name), fmnist_root, RUNS[name] + COMMON,
                                   bundle=small_bundle)
        return cache[name]
    return run


def _per_epoch(history: list[dict], key: str) -> list[int]:
    values = [0] + [row[key] for row in history]
    return [b - a for a, b in zip(values, values[1:])]


def _check_packing_counters(trainer):
    """Kept examples leave in full batches; the carried-over remainder is < batch_size."""
    snap = trainer.counters.snapshot()
    assert snap["backpropped"] % B == 0
    assert 0 <= snap["kept"] - snap["backpropped"] < B
    assert snap["train_forwarded"] == snap["backpropped"] == B * snap["steps"]


def test_traditional_counters(runs):
    trainer, summary = runs("traditional")
    for row in trainer.eval_rows:
        assert row["examples_backpropped"] == row["examples_considered"] == row["examples_forwarded"] == N
        assert row["selected_fraction"] == 1.0
    assert summary["steps"] == N // B and summary["examples_backpropped"] == N
    assert summary["strategy_params"] == {}


def test_sb_counters(runs):
    """SB: every considered example gets a selection forward; forwarded = considered + backpropped."""
    trainer, summary = runs("sb")
    assert [row["examples_considered"] for row in trainer.eval_rows] == [N, 2 * N]
    for row in trainer.eval_rows:
        assert row["examples_forwarded"] == row["examples_considered"] + row["examples_backpropped"]
        assert row["examples_backpropped"] % B == 0
    _check_packing_counters(trainer)
    snap = trainer.counters.snapshot()
    assert snap["select_forwarded"] == snap["considered"] == 2 * N
    params = summary["strategy_params"]
    assert params["beta"] == 2.0 and params["selectivity"] == pytest.approx(1 / 3)
    assert params["history"] == 1024 and params["select_batch_size"] == B
    assert summary["examples_forwarded"] == trainer.eval_rows[-1]["examples_forwarded"]
    # the run record on disk holds the same rows
    rows = [json.loads(line) for line in (trainer.recorder.metrics_path).read_text().splitlines()]
    assert [r["examples_forwarded"] for r in rows] == [r["examples_forwarded"] for r in trainer.eval_rows]


def test_sb_kept_share_is_selectivity(runs):
    """Stationary losses (frozen model): kept ≈ s·considered and backpropped ≈ s·considered.

    considered = 4·512 = 2048, s = 1/3: σ = sqrt(2048·s(1−s)) ≈ 21.3 examples. Allowances: 5σ; 8
    examples for the warm-up (a window of k < R losses keeps 1/(β+1) + 1/(2k) on average, Σ 1/(2k)
    over the first 1024 ≈ 3.8); backpropped also lags kept by the carried partial batch (< 64).
    """
    trainer, summary = runs("sb_frozen")
    snap = trainer.counters.snapshot()
    n, s = snap["considered"], 1 / 3
    assert n == 4 * N
    sigma = math.sqrt(n * s * (1 - s))
    assert abs(snap["kept"] - s * n) < 5 * sigma + 8, snap
    assert abs(snap["backpropped"] - s * n) < 5 * sigma + 8 + B, snap
    _check_packing_counters(trainer)
    assert summary["strategy_params"]["select_mode"] == "train"


@pytest.fixture(scope="module")
def stale_run(tmp_path_factory, fmnist_root, small_bundle):
    """Stale-SB n = 3 for 6 epochs, recording what each epoch starts with: the loss table, a copy of
    the selector (history + generator) and the context (to replay the epoch's order)."""
    starts: dict[int, tuple] = {}
    original = StaleSB.epoch

    def recording(self, epoch, ctx):
        self._tables(ctx)
        starts[epoch] = (self.loss_table.clone(), copy.deepcopy(self.selector), ctx)
        yield from original(self, epoch, ctx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StaleSB, "epoch", recording)
        trainer, summary = run_tiny(tmp_path_factory.mktemp("stale3"), fmnist_root,
                                    ["strategy=stale_sb", "strategy.staleness=3", "train.max_epochs=6",
                                     "train.diverge_factor=null"] + COMMON,
                                    bundle=small_bundle)
    return trainer, summary, starts


def test_stale_sb_selection_forwards_only_every_nth_epoch(stale_run):
    """Selection epochs (0, 3) forward all N + the backpropped; stale epochs forward only what is trained."""
    trainer, summary, _ = stale_run
    assert len(trainer.eval_rows) == 6
    assert _per_epoch(trainer.eval_rows, "examples_considered") == [N] * 6
    forwarded = _per_epoch(trainer.eval_rows, "examples_forwarded")
    backpropped = _per_epoch(trainer.eval_rows, "examples_backpropped")
    assert [f - b for f, b in zip(forwarded, backpropped)] == [N, 0, 0, N, 0, 0]
    assert trainer.counters.select_forwarded == 2 * N
    assert summary["strategy_params"]["staleness"] == 3
    _check_packing_counters(trainer)


def test_stale_sb_stale_epochs_rerank_stored_losses(stale_run):
    """A stale epoch keeps exactly the examples that re-ranking the stored losses against the history
    (pushed chunk by chunk, strict rule) and redrawing gives: replayed from the recorded start state.

    Epoch 0 primes (every example kept); every example then holds a finite stored loss; the stored
    losses change between stale epochs (training forwards refresh them).
    """
    trainer, _, starts = stale_run
    strategy = trainer.strategy
    assert trainer.eval_rows[0]["selected_fraction"] == 1.0
    for epoch in (1, 2, 4, 5):
        table, selector, ctx = starts[epoch]
        assert bool(torch.isfinite(table).all())
        order = ctx.source.permutation(epoch)
        masks = []
        for chunk in order.split(strategy.select_batch_size):
            p = selector.probabilities(table[chunk])
            masks.append(rules.draw(p, selector.generator.get(p.device)))
        kept = int(torch.cat(masks).sum())
        assert trainer.eval_rows[epoch]["selected_fraction"] == pytest.approx(kept / N), epoch
        assert 0 < kept < N
    assert not torch.equal(starts[1][0], starts[2][0]) and not torch.equal(starts[4][0], starts[5][0])


def test_stale_sb_staleness_one_is_sb(runs):
    """n = 1: a selection pass every epoch, the very same draws and counters as SB with the same seed."""
    stale, stale_summary = runs("stale1")
    sb, _ = runs("sb")
    keys = ("examples_forwarded", "examples_backpropped", "examples_considered", "selected_fraction", "step")
    assert [[r[k] for k in keys] for r in stale.eval_rows] == [[r[k] for k in keys] for r in sb.eval_rows]
    forwarded = _per_epoch(stale.eval_rows, "examples_forwarded")
    backpropped = _per_epoch(stale.eval_rows, "examples_backpropped")
    assert [f - b for f, b in zip(forwarded, backpropped)] == [N, N]
    assert stale_summary["strategy_params"]["staleness"] == 1


def test_kath18_end_to_end_counters(runs):
    trainer, summary = runs("kath18")
    assert _per_epoch(trainer.eval_rows, "examples_considered") == [N, N]
    snap = trainer.counters.snapshot()
    for row in trainer.eval_rows:
        assert row["examples_backpropped"] <= row["examples_considered"]
        assert row["examples_forwarded"] >= row["examples_backpropped"]
        assert 0 < row["selected_fraction"] <= 1
    assert snap["backpropped"] == snap["train_forwarded"]
    assert summary["examples_forwarded"] == snap["select_forwarded"] + snap["backpropped"]
    k18 = trainer.strategy
    assert snap["steps"] == k18.uniform_steps + k18.importance_steps
    # score_while_closed (default): every considered example gets the scoring forward, gate open or not
    assert snap["select_forwarded"] == snap["considered"]
    params = summary["strategy_params"]
    assert params["presample"] == 3 * B and params["tau_th"] == 2.0 and params["reweight"] is False
    assert params["closed_tau"] == "train" and params["sampling"] == "shuffle"


def test_kath18_closed_gate_tau_learns_from_the_training_forward(tmp_path, fmnist_root, small_bundle):
    """Through the Trainer, defaults (the authors' train_all): the gate stays closed for 2 epochs; τ is
    the EMA (momentum 0.9, from 0) of the variance-reduction estimate of the losses the trainer's
    training forward handed to after_train_step, step by step, although every example also got the
    scoring forward (select_forwarded = considered). Each epoch trains every example exactly once."""
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(fmnist_root, ["strategy=kath18", "train.max_epochs=2"] + COMMON)
    trainer = Trainer(cfg, str(tmp_path / "run"), data_bundle=small_bundle)
    k18 = trainer.strategy
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_after = k18.after_train_step

    def spy(batch, losses, logits):
        seen.append((batch.idx.clone(), losses.clone()))
        real_after(batch, losses, logits)
    k18.after_train_step = spy
    trainer.fit()
    assert k18.importance_steps == 0 and len(seen) == k18.uniform_steps == 2 * N // B
    tau = 0.0
    for _, losses in seen:
        tau = 0.9 * tau + 0.1 * float(rules.tau_estimate(losses))
    assert float(k18.tau) == pytest.approx(tau, rel=1e-5)
    snap = trainer.counters.snapshot()
    assert snap["select_forwarded"] == snap["considered"] == 2 * N
    per_step = N // B
    for epoch in range(2):
        idx = torch.cat([i for i, _ in seen[epoch * per_step:(epoch + 1) * per_step]])
        assert torch.equal(idx.sort().values, torch.arange(N))


def test_kath18_end_to_end_importance_path(tmp_path, fmnist_root, small_bundle):
    """τ resumed far above τ_th (100): every step importance-samples; reweighting on.

    Per epoch: chunks of B = 192 presampled (192, 192, 128), all scored (select forward 512), b = 64
    drawn from each → 192 backpropped, selected_fraction 192/512. τ decays by at most 0.9^6 ≈ 0.53
    over the 6 updates: still ≥ 50 > τ_th.
    """
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(fmnist_root, ["strategy=kath18", "strategy.reweight=true", "train.max_epochs=2"] + COMMON)
    trainer = Trainer(cfg, str(tmp_path / "run"), data_bundle=small_bundle)
    trainer.strategy.load_state_dict({"tau": 100.0, "generator": SeededGenerator(0).state_dict(),
                                      "importance_steps": 0, "uniform_steps": 0})
    trainer.fit()
    assert _per_epoch(trainer.eval_rows, "examples_considered") == [N, N]
    assert _per_epoch(trainer.eval_rows, "examples_backpropped") == [3 * B, 3 * B]
    assert _per_epoch(trainer.eval_rows, "examples_forwarded") == [N + 3 * B, N + 3 * B]
    assert [r["selected_fraction"] for r in trainer.eval_rows] == [3 * B / N] * 2
    assert trainer.strategy.importance_steps == 6 and trainer.strategy.uniform_steps == 0
    assert trainer.strategy.gate_open()
    assert all(math.isfinite(r["train_loss"]) for r in trainer.eval_rows)


def test_uniform_end_to_end(runs):
    """No selection forward (forwarded == backpropped); per-epoch kept share within 5σ of s = 0.5.

    σ = sqrt(0.25/512) ≈ 0.022 per epoch; over the 4 epochs (2048 draws) ≈ 0.011.
    """
    trainer, summary = runs("uniform")
    s = 0.5
    for row in trainer.eval_rows:
        assert row["examples_forwarded"] == row["examples_backpropped"]
        assert abs(row["selected_fraction"] - s) < 5 * math.sqrt(s * (1 - s) / N)
    snap = trainer.counters.snapshot()
    assert snap["select_forwarded"] == 0 and snap["considered"] == 4 * N
    assert abs(snap["kept"] / snap["considered"] - s) < 5 * math.sqrt(s * (1 - s) / snap["considered"])
    _check_packing_counters(trainer)
    assert summary["strategy_params"] == {"beta": 1.0, "selectivity": 0.5}
