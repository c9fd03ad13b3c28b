"""The closed forms against independent oracles, in float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rece_lite import closed_form as cf

D = 6


def _toy(seed: int, out: int = 5, n: int = 3, m: int = 4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(out, D), r(n, D), r(n, D), r(m, D)


def uce_objective(Wn, W, ce, targets, cp, lamb, se, sp):
    return (
        lamb * ((Wn - W) ** 2).sum()
        + se * ((ce @ Wn.T - targets) ** 2).sum()
        + sp * ((cp @ Wn.T - cp @ W.T) ** 2).sum()
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lamb,se,sp", [(0.1, 1.0, 0.1), (0.5, 2.0, 1.0), (1e-3, 1.0, 0.0)])
def test_uce_matches_brute_force_least_squares(seed, lamb, se, sp):
    W, ce, cg, cp = _toy(seed)
    targets = cg @ W.T
    got = cf.uce_weights(W, ce, targets, cp, lamb=lamb, erase_scale=se, preserve_scale=sp)
    # Each row w' of W' solves a stacked least-squares problem: rows sqrt(weight)*c, rhs sqrt(weight)*target.
    A = torch.cat([lamb**0.5 * torch.eye(D, dtype=torch.float64), se**0.5 * ce, sp**0.5 * cp])
    B = torch.cat([lamb**0.5 * W.T, se**0.5 * targets, sp**0.5 * (cp @ W.T)])
    brute = torch.linalg.lstsq(A, B, driver="gelsd").solution.T
    torch.testing.assert_close(got, brute, rtol=1e-8, atol=1e-9)


def test_uce_gradient_is_zero_at_solution_and_matches_gradient_descent():
    W, ce, cg, cp = _toy(3)
    targets = cg @ W.T
    args = (W, ce, targets, cp, 0.1, 1.0, 0.1)
    sol = cf.uce_weights(W, ce, targets, cp, lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
    x = sol.clone().requires_grad_(True)
    uce_objective(x, *args).backward()
    assert x.grad.abs().max() < 1e-9
    # Independent oracle: plain gradient descent from W.
    y = W.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([y], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = uce_objective(y, *args)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    torch.testing.assert_close(y.detach(), sol, rtol=1e-6, atol=1e-6)
    # And the solution is strictly better than a perturbed one.
    assert uce_objective(sol, *args) < uce_objective(sol + 1e-3, *args)


def test_one_shared_map_for_every_matrix():
    _, ce, cg, cp = _toy(4)
    M = cf.uce_map(ce, cg, cp, lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
    for out in (3, 5, 11):
        W = torch.randn(out, D, dtype=torch.float64)
        direct = cf.uce_weights(W, ce, cg @ W.T, cp, lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
        torch.testing.assert_close(direct, W @ M, rtol=1e-9, atol=1e-10)
    assert torch.linalg.matrix_rank(M) == D  # invertible: some embedding always undoes it


def test_solves_in_float64_whatever_the_dtype():
    W, ce, cg, cp = _toy(5)
    got32 = cf.uce_weights(W.float(), ce.float(), (cg @ W.T).float(), cp.float())
    ref = cf.uce_weights(W, ce, cg @ W.T, cp)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-5)


def _layers(seed: int, outs=(4, 7, 9)):
    g = torch.Generator().manual_seed(seed)
    orig = [torch.randn(o, D, generator=g, dtype=torch.float64) for o in outs]
    P = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64)
    return orig, [w @ P for w in orig], P


def _stacked_lstsq(cur, orig, c, reg_rows=None, reg_rhs=None):
    A = torch.cat(cur + ([reg_rows] if reg_rows is not None else []))
    b = torch.cat([w @ c for w in orig] + ([reg_rhs] if reg_rhs is not None else []))
    return torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]


@pytest.mark.parametrize("reg", ["zero", "standard", "surrogate"])
def test_each_regulariser_solves_its_own_objective(reg):
    orig, cur, _ = _layers(0)
    c = torch.randn(D, dtype=torch.float64)
    old = torch.randn(D, dtype=torch.float64)
    lam = 0.3
    H, K = cf.gram(cur), cf.gram(cur, orig)
    got = cf.derive_embedding(H, K, c[None], reg=reg, reg_scale=lam, old_target=old[None])[0]
    s = lam**0.5
    if reg == "zero":
        brute = _stacked_lstsq(cur, orig, c, s * torch.eye(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64))
    elif reg == "standard":
        brute = _stacked_lstsq(cur, orig, c, s * torch.eye(D, dtype=torch.float64), s * old)
    else:  # λ' Σ‖W_l c' − W_l c‖²: stack the current matrices again, with the concept as target
        A = torch.cat(cur + [s * w for w in cur])
        b = torch.cat([w @ c for w in orig] + [s * (w @ c) for w in cur])
        brute = torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]
    torch.testing.assert_close(got, brute, rtol=1e-8, atol=1e-9)


def test_factored_derivation_equals_direct_sum_over_layers():
    orig, cur, P = _layers(1)
    G = cf.gram(orig)
    c = torch.randn(3, D, dtype=torch.float64)
    direct = cf.derive_embedding(cf.gram(cur), cf.gram(cur, orig), c, reg_scale=0.1)
    factored = cf.derive_embedding(P.T @ G @ P, P.T @ G, c, reg_scale=0.1)
    torch.testing.assert_close(direct, factored, rtol=1e-9, atol=1e-10)


def test_residual_from_grams_matches_explicit_sum_and_drops():
    orig, cur, _ = _layers(2)
    c = torch.randn(2, D, dtype=torch.float64)
    H, K, G = cf.gram(cur), cf.gram(cur, orig), cf.gram(orig)
    c_new = cf.derive_embedding(H, K, c, reg_scale=1e-3)
    explicit = sum(((c_new @ w.T - c @ v.T) ** 2).sum(1) for w, v in zip(cur, orig))
    torch.testing.assert_close(cf.residual(H, K, G, c_new, c), explicit, rtol=1e-8, atol=1e-9)
    assert (cf.residual(H, K, G, c_new, c) < cf.residual(H, K, G, c, c)).all()


def test_grams_after_an_edit_equal_the_grams_of_the_edited_matrices():
    orig, _, _ = _layers(3)
    g = torch.Generator().manual_seed(4)
    eye = torch.eye(D, dtype=torch.float64)
    maps = [eye + 0.2 * torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(3)]
    state, cur = cf.Grams.start(cf.gram(orig)), orig
    for M in maps:
        state, cur = state.after(M), [w @ M for w in cur]
    torch.testing.assert_close(state.H, cf.gram(cur), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.K, cf.gram(cur, orig), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.Q, maps[0] @ maps[1] @ maps[2], rtol=1e-12, atol=1e-12)


def test_grams_start_from_the_current_matrices_with_the_identity():
    orig, cur, _ = _layers(4)
    state = cf.Grams.start(cf.gram(cur), cf.gram(cur, orig))
    torch.testing.assert_close(state.Q, torch.eye(D, dtype=torch.float64))
    torch.testing.assert_close(state.K, cf.gram(cur, orig))


def test_grams_derive_is_the_derivation_against_its_state():
    orig, cur, _ = _layers(5)
    c = torch.randn(2, D, dtype=torch.float64)
    state = cf.Grams.start(cf.gram(cur), cf.gram(cur, orig))
    expected = cf.derive_embedding(cf.gram(cur), cf.gram(cur, orig), c, reg_scale=0.2)
    torch.testing.assert_close(state.derive(c, reg_scale=0.2), expected, rtol=0, atol=0)


def test_grams_are_a_frozen_value():
    state = cf.Grams.start(torch.eye(D, dtype=torch.float64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.H = torch.zeros(D, D, dtype=torch.float64)


@pytest.mark.parametrize(
    "device, expected",
    [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "cpu"), (torch.device("mps"), "cpu")],
)
def test_solves_run_on_the_device_unless_it_lacks_float64(device, expected):
    assert cf.solve_device(device) == torch.device(expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_results_come_back_in_the_callers_dtype(dtype):
    W, ce, cg, cp = _toy(7)
    out = cf.uce_weights(W.to(dtype), ce.to(dtype), (cg @ W.T).to(dtype), cp.to(dtype))
    assert out.dtype == dtype


_W, _CE, _CG, _CP = _toy(6)
_H = cf.gram([_W])


BAD_INPUT = {
    "lamb = 0": (lambda: cf.uce_map(_CE, _CG, _CP, lamb=0.0), ValueError, "lamb must be > 0"),
    "lamb NaN": (lambda: cf.uce_map(_CE, _CG, _CP, lamb=float("nan")), ValueError, "lamb must be finite"),
    "lamb inf": (lambda: cf.uce_map(_CE, _CG, _CP, lamb=float("inf")), ValueError, "lamb must be finite"),
    "lamb a string": (lambda: cf.uce_map(_CE, _CG, _CP, lamb="0.1"), TypeError, "lamb must be a number"),
    "lamb a bool": (lambda: cf.uce_map(_CE, _CG, _CP, lamb=True), TypeError, "lamb must be a number"),
    "erase_scale < 0": (lambda: cf.uce_map(_CE, _CG, _CP, erase_scale=-1.0), ValueError, "erase_scale must be >= 0"),
    "erase_scale NaN": (
        lambda: cf.uce_map(_CE, _CG, _CP, erase_scale=float("nan")), ValueError, "erase_scale must be finite"
    ),
    "preserve_scale inf": (
        lambda: cf.uce_map(_CE, _CG, _CP, preserve_scale=float("inf")), ValueError, "preserve_scale must be finite"
    ),
    "preserve_scale < 0": (
        lambda: cf.uce_weights(_W, _CE, _CG @ _W.T, preserve_scale=-1), ValueError, "preserve_scale must be >= 0"
    ),
    "guide misaligned": (lambda: cf.uce_map(_CE, _CG[:2], _CP), ValueError, "align"),
    "preserve too wide": (
        lambda: cf.uce_map(_CE, _CG, torch.randn(2, D + 1, dtype=torch.float64)), ValueError, "width"
    ),
    "complex erase": (lambda: cf.uce_map(_CE.to(torch.complex128), _CG, _CP), TypeError, "complex"),
    "standard without old_target": (lambda: cf.derive_embedding(_H, _H, _CE, reg="standard"), ValueError, "old_target"),
    "reg unknown": (lambda: cf.derive_embedding(_H, _H, _CE, reg="ridge"), ValueError, "reg must be"),
    "reg_scale = 0": (lambda: cf.derive_embedding(_H, _H, _CE, reg_scale=0.0), ValueError, "reg_scale must be > 0"),
    "reg_scale NaN": (
        lambda: cf.derive_embedding(_H, _H, _CE, reg_scale=float("nan")), ValueError, "reg_scale must be finite"
    ),
    "reg_scale a string": (
        lambda: cf.derive_embedding(_H, _H, _CE, reg_scale="1e-3"), TypeError, "reg_scale must be a number"
    ),
    "neither K nor Kc": (lambda: cf.derive_embedding(_H, None, _CE), ValueError, "give K"),
    "no matrices": (lambda: cf.gram([]), ValueError, "no matrices"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_with_a_reason(case):
    call, error, match = BAD_INPUT[case]
    with pytest.raises(error, match=match):
        call()


def test_non_finite_embeddings_are_a_solve_error():
    bad = _CE.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(cf.SolveError, match="NaN"):
        cf.uce_map(bad, _CG, _CP)
