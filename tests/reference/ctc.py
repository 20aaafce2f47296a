"""Float64 oracles for the ctc family, written from SEED_NOTES "CTC" (not from
the kernels): the alpha recursion and its mirror beta in log space with NumPy,
and brute-force enumeration of every alignment for tiny inputs."""

from __future__ import annotations

import itertools

import numpy as np

NEG_INF = -np.inf


def _lse(*values: float) -> float:
    m = max(values)
    if m == NEG_INF:
        return NEG_INF
    return m + np.log(sum(np.exp(v - m) for v in values))


def _extended(target, blank):
    z = [blank]
    for label in target:
        z += [label, blank]
    return z


def alpha_beta(lp: np.ndarray, target, blank: int):
    """log alpha, log beta ([T, 2S+1]) of one sample; lp is [T, C] (float64).

    alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) [+ alpha_{t-1}(s-2) if z_s is a
    label != z_{s-2}]) * y_t(z_s); beta the same backwards. Both include y_t(z_s).
    """
    z = _extended(target, blank)
    t_len, s_len = lp.shape[0], len(z)
    alpha = np.full((t_len, s_len), NEG_INF)
    beta = np.full((t_len, s_len), NEG_INF)
    if t_len == 0:
        return alpha, beta
    alpha[0, 0] = lp[0, z[0]]
    if s_len > 1:
        alpha[0, 1] = lp[0, z[1]]
    for t in range(1, t_len):
        for s in range(s_len):
            terms = [alpha[t - 1, s]]
            if s >= 1:
                terms.append(alpha[t - 1, s - 1])
            if s >= 2 and z[s] != blank and z[s] != z[s - 2]:
                terms.append(alpha[t - 1, s - 2])
            alpha[t, s] = _lse(*terms) + lp[t, z[s]]
    beta[t_len - 1, s_len - 1] = lp[t_len - 1, z[-1]]
    if s_len > 1:
        beta[t_len - 1, s_len - 2] = lp[t_len - 1, z[-2]]
    for t in range(t_len - 2, -1, -1):
        for s in range(s_len):
            terms = [beta[t + 1, s]]
            if s + 1 < s_len:
                terms.append(beta[t + 1, s + 1])
            if s + 2 < s_len and z[s] != blank and z[s] != z[s + 2]:
                terms.append(beta[t + 1, s + 2])
            beta[t, s] = _lse(*terms) + lp[t, z[s]]
    return alpha, beta


def nll(lp: np.ndarray, target, blank: int) -> float:
    """-log p(target | lp) of one sample, lp [T, C]."""
    if lp.shape[0] == 0:
        return 0.0 if len(target) == 0 else np.inf
    alpha, _ = alpha_beta(lp, target, blank)
    last = alpha[-1]
    return -(_lse(last[-1], last[-2]) if len(target) else last[-1])


def grad_torch_form(lp: np.ndarray, target, blank: int) -> np.ndarray:
    """d nll / d logits expressed per log_prob as torch returns it:
    exp(lp) - sum_{s: z_s = c} exp(alpha_t(s) + beta_t(s) - lp_t(c)) / p."""
    t_len, c_len = lp.shape
    if t_len == 0:
        return np.zeros_like(lp)
    loss = nll(lp, target, blank)
    if not np.isfinite(loss):
        return np.full_like(lp, np.nan)
    alpha, beta = alpha_beta(lp, target, blank)
    z = _extended(target, blank)
    occupancy = np.zeros_like(lp)
    for t in range(t_len):
        for s, c in enumerate(z):
            occupancy[t, c] += np.exp(alpha[t, s] + beta[t, s] - lp[t, c] + loss)
    return np.exp(lp) - occupancy


def collapse(path, blank: int) -> tuple:
    out = []
    prev = None
    for c in path:
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return tuple(out)


def brute_force_nll(lp: np.ndarray, target, blank: int) -> float:
    """Sum over every path of length T that collapses to the target (tiny T, C only)."""
    t_len, c_len = lp.shape
    target = tuple(target)
    total = NEG_INF
    for path in itertools.product(range(c_len), repeat=t_len):
        if collapse(path, blank) == target:
            total = _lse(total, sum(lp[t, c] for t, c in enumerate(path)))
    return -total


def brute_force_best_labelling(lp: np.ndarray, blank: int):
    """(labelling, log p) maximising p(labelling | lp) over all labellings."""
    t_len, c_len = lp.shape
    scores: dict[tuple, float] = {}
    for path in itertools.product(range(c_len), repeat=t_len):
        key = collapse(path, blank)
        scores[key] = _lse(scores.get(key, NEG_INF), sum(lp[t, c] for t, c in enumerate(path)))
    best = max(scores.items(), key=lambda kv: kv[1])
    return best[0], best[1], scores


def prefix_beam_search(lp: np.ndarray, beam_width: int, blank: int):
    """Plain CTC prefix beam search (every prefix extended by every class, then
    the beam_width most likely kept): (best labelling, its beam log-probability)."""
    beam = {(): (0.0, NEG_INF)}  # prefix -> (log p ending in blank, log p ending in a label)
    for t in range(lp.shape[0]):
        nxt: dict[tuple, list] = {}

        def add(prefix, pb, pnb):
            cur = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
            cur[0] = _lse(cur[0], pb)
            cur[1] = _lse(cur[1], pnb)

        for prefix, (pb, pnb) in beam.items():
            total = _lse(pb, pnb)
            for c in range(lp.shape[1]):
                p = lp[t, c]
                if c == blank:
                    add(prefix, total + p, NEG_INF)
                elif prefix and c == prefix[-1]:
                    add(prefix, NEG_INF, pnb + p)
                    add(prefix + (c,), NEG_INF, pb + p)
                else:
                    add(prefix + (c,), NEG_INF, total + p)
        ranked = sorted(nxt.items(), key=lambda kv: -_lse(*kv[1]))[:beam_width]
        beam = {k: tuple(v) for k, v in ranked}
    best = max(beam.items(), key=lambda kv: _lse(*kv[1]))
    return best[0], _lse(*best[1])
