"""Selection rules as pure tensor functions (no state, no host syncs).

Every function here takes tensors on any device and returns tensors on the same device.
The stateful wrappers in :mod:`selective_backprop.selection.selector` hold history and generators.
"""

from __future__ import annotations

import math

import torch

from selective_backprop.errors import ConfigError


def beta_from_selectivity(selectivity: float) -> float:
    """β such that E[U^β] = selectivity for U ~ Uniform(0, 1): β = 1/s − 1."""
    return 1.0 / selectivity - 1.0


def selectivity_from_beta(beta: float) -> float:
    """Expected kept share 1/(β+1) of the rule P = CDF(loss)^β."""
    return 1.0 / (beta + 1.0)


def resolve_beta(beta: float | None, selectivity: float | None, *, prefix: str = "strategy",
                 default_beta: float = 2.0, rel_tol: float = 1e-3) -> tuple[float, float]:
    """Return (β, selectivity) from either one; both given must agree; neither gives `default_beta`."""
    if isinstance(beta, bool) or isinstance(selectivity, bool):
        raise ConfigError(f"{prefix}.beta / {prefix}.selectivity must be numbers, got {beta!r} / {selectivity!r}")
    if beta is not None and not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ConfigError(f"{prefix}.beta={beta!r}: must be a number > 0")
    if selectivity is not None and not (isinstance(selectivity, (int, float)) and 0 < selectivity <= 1):
        raise ConfigError(f"{prefix}.selectivity={selectivity!r}: must be in (0, 1]")
    if beta is None and selectivity is None:
        beta = default_beta
    if beta is None:
        if selectivity >= 1.0:
            raise ConfigError(f"{prefix}.selectivity={selectivity!r}: must be < 1 for a CDF^beta rule "
                              f"(beta = 1/s - 1 would be 0); use strategy=traditional to keep everything")
        return beta_from_selectivity(float(selectivity)), float(selectivity)
    derived = selectivity_from_beta(float(beta))
    if selectivity is not None and not math.isclose(derived, selectivity, rel_tol=rel_tol):
        raise ConfigError(f"{prefix}.beta={beta} and {prefix}.selectivity={selectivity} disagree "
                          f"(beta={beta} means selectivity {derived:.4f}); give only one of them")
    return float(beta), derived


def sequential_percentiles(history: torch.Tensor, filled: int, losses: torch.Tensor) -> torch.Tensor:
    """Percentile of each new loss within the rolling window of the last R losses, as if pushed one by one.

    `history` holds R slots in time order (oldest first); its last `filled` entries are valid.
    Example j of `losses` is pushed after examples 0..j-1, so its window is the last R entries of
    history ++ losses[:j+1]. Percentile = (#window entries <= loss_j) / window length, counting
    loss_j itself (ties count as <=; the first loss ever has percentile 1).

    For n <= R the count is #(history <= loss_j) by a binary search in the sorted history, minus the
    history entries that left example j's window (at most n of them), plus the earlier new losses
    <= loss_j: O(R log R + n^2) instead of the O(n (R + n)) comparison matrix, same integers.
    """
    capacity = history.shape[0]
    if losses.shape[0] <= capacity and history.dtype != torch.float64:
        return _percentiles_sorted(history, filled, losses)
    seq = torch.cat([history[capacity - filled:], losses.to(history.dtype)])
    n = losses.shape[0]
    pos = filled + torch.arange(n, device=losses.device)            # position of example j in seq
    t = torch.arange(seq.shape[0], device=losses.device)
    in_window = (t[None, :] <= pos[:, None]) & (t[None, :] > pos[:, None] - capacity)
    below = seq[None, :] <= losses.to(history.dtype)[:, None]
    counts = (below & in_window).sum(dim=1)
    window_len = torch.clamp(pos + 1, max=capacity)
    return counts.to(torch.float32) / window_len.to(torch.float32)


_FAR = 1e300   # beyond any float32 / float16 / bfloat16 value, short of float64's infinity


def _percentiles_sorted(history: torch.Tensor, filled: int, losses: torch.Tensor) -> torch.Tensor:
    """sequential_percentiles for n <= R and a history narrower than float64 (see there)."""
    capacity = history.shape[0]
    n = losses.shape[0]
    x = losses.to(history.dtype)
    valid = history[capacity - filled:]                              # oldest first
    # #(history <= x_j) by binary search, which needs a total order. In float64, ±inf become ±1e300
    # and NaN (never <= anything) +inf in the history and -inf in the queries: the counts of the
    # matrix form, NaN queries counting 0.
    ordered = valid.double().nan_to_num_(nan=float("inf"), posinf=_FAR, neginf=-_FAR).sort().values
    query = x.double().nan_to_num_(nan=-float("inf"), posinf=_FAR, neginf=-_FAR)
    in_history = torch.searchsorted(ordered, query, right=True)
    # example j's window lost the history entries t < filled + j + 1 - R and gained the new losses
    # k <= j. Shifting the history right by R - filled (NaN fill: never counted) turns both into
    # "entry k <= j": one lower triangle of a [2, n, n] comparison, rows (history head, new losses)
    shift = min(capacity - filled, n)
    head = [x.new_full((shift,), float("nan"))] if shift else []
    rows = torch.cat([*head, valid[:n - shift], x]).view(2, 1, n)
    dropped, earlier = (rows <= x.view(1, n, 1)).tril_().sum(dim=2)
    window_len = torch.arange(filled + 1, filled + n + 1, device=losses.device, dtype=torch.float32)
    return (in_history - dropped + earlier).to(torch.float32) / window_len.clamp_(max=capacity)


PERCENTILE_RULES = ("strict", "inclusive")


def batch_percentiles(history: torch.Tensor, filled: int, losses: torch.Tensor) -> torch.Tensor:
    """The authors' rule: percentile of each loss within the window *after* the whole batch is pushed.

    The window is the last R entries of history ++ losses (the history's last `filled` slots are
    valid, oldest first); percentile = #(window entries strictly below L) / window length, the same
    length for the whole batch. The lowest loss, and every exact tie with it (e.g. float32
    cross-entropy that has reached 0), gets percentile 0. SelectiveBackprop `lib/calculators.py`
    (BatchedRelativeProbabilityCalculator: update_history, then percentile_of_score) and
    `lib/hist.py` (UnboundedHistogram: count of i < score, / len(history)).

    Sort + binary search, no host sync. NaN (never below anything, never counted) sorts as +inf
    in the window and queries as -inf, so NaN entries count only in the length and NaN losses get 0.
    """
    capacity = history.shape[0]
    x = losses.detach().to(history.dtype)
    window = torch.cat([history[capacity - filled:], x])[-capacity:]
    inf = window.new_full((), float("inf"))      # a fill, not a host-to-device copy (that would sync on CUDA)
    ordered = torch.where(torch.isnan(window), inf, window).sort().values
    query = torch.where(torch.isnan(x), -inf, x)
    below = torch.searchsorted(ordered, query, right=False)
    return below.to(torch.float32) / float(window.shape[0])


def percentiles(rule: str, history: torch.Tensor, filled: int, losses: torch.Tensor) -> torch.Tensor:
    """`strict`: batch_percentiles (the authors'); `inclusive`: sequential_percentiles (one by one, <=)."""
    if rule == "strict":
        return batch_percentiles(history, filled, losses)
    if rule == "inclusive":
        return sequential_percentiles(history, filled, losses)
    raise ConfigError(f"strategy.percentile={rule!r}: must be one of {', '.join(PERCENTILE_RULES)}")


def push_history(history: torch.Tensor, filled: int, losses: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Append losses to the time-ordered window, dropping the oldest; returns (history, filled)."""
    capacity = history.shape[0]
    merged = torch.cat([history, losses.detach().to(history.dtype)])[-capacity:]
    return merged, min(capacity, filled + losses.shape[0])


def keep_probabilities(percentiles: torch.Tensor, beta: float, prob_min: float = 0.0) -> torch.Tensor:
    """P = max(percentile^β, prob_min)."""
    return torch.clamp(percentiles.pow(beta), min=prob_min, max=1.0)


def draw(probabilities: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli keep mask with the given probabilities, from a dedicated generator."""
    u = torch.rand(probabilities.shape, generator=generator, device=probabilities.device)
    return u < probabilities


def kept_first_order(mask: torch.Tensor) -> torch.Tensor:
    """Permutation that puts kept rows first, each group in its original order (no host sync)."""
    return torch.argsort((~mask).to(torch.int8), stable=True)


# --- Kath18 (Katharopoulos & Fleuret 2018) -------------------------------------------------------

def tau_estimate(scores: torch.Tensor) -> torch.Tensor:
    """τ = 1/sqrt(1 − ‖g − u‖² / ‖g‖²), g = scores/Σscores, u = 1/B (the variance-reduction estimate).

    All-zero scores give g = u and τ = 1. Returns a 0-d float tensor on the scores' device.
    """
    scores = scores.detach().to(torch.float64)
    size = scores.shape[0]
    total = scores.sum()
    g = torch.where(total > 0, scores / torch.where(total > 0, total, 1.0), 1.0 / size)
    u = 1.0 / size
    ratio = ((g - u) ** 2).sum() / (g ** 2).sum()
    return (1.0 / torch.sqrt(torch.clamp(1.0 - ratio, min=1e-12))).to(torch.float32)


def tau_threshold(presample: int, batch_size: int) -> float:
    """τ_th = (B + 3b) / (3b): importance sampling pays off only above it."""
    return (presample + 3.0 * batch_size) / (3.0 * batch_size)


def importance_sample(scores: torch.Tensor, k: int, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw k positions with replacement, p ∝ score; returns (positions, p of each drawn position)."""
    scores = scores.detach().to(torch.float32).clamp(min=0)
    total = scores.sum()
    p = torch.where(total > 0, scores / torch.where(total > 0, total, 1.0),
                    torch.full_like(scores, 1.0 / scores.shape[0]))
    positions = torch.multinomial(p, k, replacement=True, generator=generator)
    return positions, p[positions]


def gradient_norm_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """‖softmax(logits) − onehot(y)‖₂: the upper bound on the last layer's gradient norm."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    onehot = torch.nn.functional.one_hot(targets, probs.shape[1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1)
