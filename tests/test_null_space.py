"""Null-space edits (SPEED / AlphaEdit) against independent float64 oracles, and on the tiny pipeline."""

from __future__ import annotations

import warnings

import pytest
import scipy.linalg
import torch

from rece_lite import closed_form as cf

D = 8


def _toy(seed: int, out: int = 5, n: int = 3, m: int = 4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(out, D), r(n, D), r(n, D), r(m, D)


def objective(Wn, W, ce, targets, lamb, se):
    """The erase and λ terms of UCE's objective (what the null-space edit minimises)."""
    return se * ((ce @ Wn.T - targets) ** 2).sum() + lamb * ((Wn - W) ** 2).sum()


def kkt(W, ce, targets, keep, lamb, se):
    """The constrained optimum from its KKT system (keep of full row rank), row by row of W'.

    [2(s_e CᵀC + λI)  K₀ᵀ] [w]   [2(s_e Cᵀv + λ w₀)]
    [K₀               0  ] [μ] = [K₀ w₀            ]
    """
    m = keep.shape[0]
    top = torch.cat([2 * (se * ce.T @ ce + lamb * torch.eye(D, dtype=torch.float64)), keep.T], 1)
    bottom = torch.cat([keep, torch.zeros(m, m, dtype=torch.float64)], 1)
    rhs = torch.cat([2 * (se * ce.T @ targets + lamb * W.T), keep @ W.T])  # (D + m, out)
    return torch.linalg.solve(torch.cat([top, bottom]), rhs)[:D].T


def reparametrised(W, ce, targets, keep, lamb, se):
    """The constrained optimum as plain least squares over W' = W + Z Nᵀ, N an orthonormal basis of
    the null space of ``keep`` (scipy's SVD): any Z satisfies the constraint, so stack and lstsq."""
    N = torch.from_numpy(scipy.linalg.null_space(keep.numpy()))  # (D, D - rank)
    # rows of Z: z minimises s_e‖C N z − (v − C w₀)‖² + λ‖z‖²  (‖N z‖ = ‖z‖)
    A = torch.cat([se**0.5 * ce @ N, lamb**0.5 * torch.eye(N.shape[1], dtype=torch.float64)])
    B = torch.cat([se**0.5 * (targets - ce @ W.T), torch.zeros(N.shape[1], W.shape[0], dtype=torch.float64)])
    Z = torch.linalg.lstsq(A, B, driver="gelsd").solution.T
    return W + Z @ N.T


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("lamb,se", [(0.1, 1.0), (0.5, 2.0), (1e-3, 1.0)])
def test_null_space_edit_is_the_kkt_solution_and_keeps_rows_exactly(seed, lamb, se):
    W, ce, cg, keep = _toy(seed)
    targets = cg @ W.T
    got = cf.null_space_weights(W, ce, targets, keep, lamb=lamb, erase_scale=se)
    assert rel(keep @ got.T, keep @ W.T) < 1e-6  # kept rows' outputs unchanged
    torch.testing.assert_close(got, kkt(W, ce, targets, keep, lamb, se), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(got, reparametrised(W, ce, targets, keep, lamb, se), rtol=1e-8, atol=1e-9)
    assert rel(got, W) > 1e-3  # it did edit


def test_feasible_perturbations_never_lower_the_objective():
    W, ce, cg, keep = _toy(7)
    targets = cg @ W.T
    got = cf.null_space_weights(W, ce, targets, keep, lamb=0.1, erase_scale=1.0)
    best = objective(got, W, ce, targets, 0.1, 1.0)
    N = torch.from_numpy(scipy.linalg.null_space(keep.numpy()))
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1e-2, 1.0):
        for _ in range(50):
            E = torch.randn(W.shape[0], N.shape[1], generator=g, dtype=torch.float64) @ N.T * scale
            assert rel(keep @ (got + E).T, keep @ W.T) < 1e-10  # feasible
            assert objective(got + E, W, ce, targets, 0.1, 1.0) >= best
    # and an infeasible change can lower it: the constraint binds
    free = cf.uce_weights(W, ce, targets, None, lamb=0.1, erase_scale=1.0, preserve_scale=0.0)
    assert objective(free, W, ce, targets, 0.1, 1.0) < best - 1e-6


def test_map_factors_the_edit_for_every_matrix():
    W, ce, cg, keep = _toy(4)
    M, rank = cf.null_space_map(ce, cg, keep, lamb=0.1, erase_scale=1.0)
    assert rank == keep.shape[0]
    for seed in range(3):
        Wi = torch.randn(6, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(Wi @ M, cf.null_space_weights(Wi, ce, cg @ Wi.T, keep), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(keep @ M.T, keep, rtol=0, atol=1e-10)  # M acts as the identity on kept rows


def test_uce_with_a_huge_preserve_scale_converges_to_it():
    """The constrained optimum is the limit of UCE's penalty as preserve_scale → ∞; UCE's kept error ~ 1/s_p."""
    W, ce, cg, keep = _toy(5)
    targets = cg @ W.T
    exact = cf.null_space_weights(W, ce, targets, keep, lamb=0.1, erase_scale=1.0)
    errs = []
    for sp in (1e2, 1e4, 1e6):
        uce = cf.uce_weights(W, ce, targets, keep, lamb=0.1, erase_scale=1.0, preserve_scale=sp)
        errs.append(rel(keep @ uce.T, keep @ W.T))
        assert rel(uce, exact) < 100 / sp
    assert errs[0] > 50 * errs[1] > 2500 * errs[2] > 0  # a floor that only vanishes in the limit


def test_dependent_kept_rows_give_their_rank():
    W, ce, cg, base = _toy(6, m=3)
    mix = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = torch.cat([base, mix @ base])  # 8 rows of rank 3
    P, rank = cf.null_space_projector(keep)
    assert rank == 3
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-12)
    torch.testing.assert_close(P, P.T, rtol=0, atol=0)
    assert float((keep @ P).abs().max()) < 1e-12
    assert abs(float(torch.trace(P)) - (D - 3)) < 1e-10
    targets = cg @ W.T
    got = cf.null_space_weights(W, ce, targets, keep)
    assert rel(keep @ got.T, keep @ W.T) < 1e-6
    torch.testing.assert_close(got, reparametrised(W, ce, targets, base, 0.1, 1.0), rtol=1e-8, atol=1e-9)


def test_rank_tol_drops_directions_below_it():
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    svals = torch.tensor([10.0, 1.0, 1e-3, 1e-9], dtype=torch.float64)
    keep = (torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64)).Q * svals) @ Q[:, :4].T  # σ = svals
    assert cf.null_space_projector(keep, rank_tol=1e-6)[1] == 3
    assert cf.null_space_projector(keep, rank_tol=1e-2)[1] == 2
    assert cf.null_space_projector(keep, rank_tol=0.5)[1] == 1
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="rank_tol"):
            cf.null_space_projector(keep, rank_tol=bad)
    with pytest.raises(TypeError, match="rank_tol"):
        cf.null_space_projector(keep, rank_tol="0.1")


def test_full_rank_keep_set_is_refused_by_name():
    W, ce, cg, _ = _toy(8)
    keep = torch.randn(D + 3, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert cf.null_space_projector(keep)[1] == D
    assert float(cf.null_space_projector(keep)[0].abs().max()) < 1e-12
    with pytest.raises(cf.NoRoomError, match=f"span all {D} dimensions"):
        cf.null_space_weights(W, ce, cg @ W.T, keep)
    with pytest.raises(cf.NoRoomError, match="null space"):
        cf.null_space_map(ce, cg, keep)
    # a loose tolerance holds only the main directions and leaves room
    M, rank = cf.null_space_map(ce, cg, keep, rank_tol=0.9)
    assert rank < D and not torch.allclose(M, torch.eye(D, dtype=torch.float64))


def test_nothing_kept_is_uce_without_preserve():
    W, ce, cg, _ = _toy(9)
    targets = cg @ W.T
    free = cf.uce_weights(W, ce, targets, None, lamb=0.1, erase_scale=1.0, preserve_scale=0.0)
    for keep in (None, torch.zeros(0, D, dtype=torch.float64)):
        torch.testing.assert_close(cf.null_space_weights(W, ce, targets, keep), free, rtol=1e-9, atol=1e-10)
    assert cf.null_space_map(ce, cg, None)[1] == 0


def test_bad_inputs_name_the_problem():
    W, ce, cg, keep = _toy(10)
    with pytest.raises(ValueError, match="lamb"):
        cf.null_space_map(ce, cg, keep, lamb=0)
    with pytest.raises(ValueError, match="align row by row"):
        cf.null_space_map(ce, cg[:2], keep)
    with pytest.raises(ValueError, match="keep embeddings have width"):
        cf.null_space_map(ce, cg, keep[:, :5])
    with pytest.raises(ValueError, match="targets"):
        cf.null_space_weights(W, ce, (cg @ W.T)[:2], keep)
    with pytest.raises(cf.SolveError):
        cf.null_space_projector(keep * float("nan"))


def test_dtype_and_float32_inputs():
    W, ce, cg, keep = _toy(11)
    got = cf.null_space_weights(W.float(), ce.float(), (cg @ W.T).float(), keep.float())
    assert got.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M, _ = cf.null_space_map(ce.float(), cg.float(), keep.float())
    assert M.dtype == torch.float64


# ------------------------------------------------------------------------ on a pipeline
def _weights(pipe) -> dict[str, torch.Tensor]:
    from rece_lite import layers

    return {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}


KEEP = ["blue", "a green square"]


def test_pipeline_edit_keeps_kept_outputs_and_equals_the_closed_form(rand_pipe):
    import rece_lite as rl
    from rece_lite.null_space import null_space_erase

    before = _weights(rand_pipe)
    ce, cg = rl.encode(rand_pipe, "red")[0].double(), rl.encode(rand_pipe, "")[0].double()
    ck = rl.encode(rand_pipe, KEEP).reshape(-1, 64).double()
    patch = null_space_erase(rand_pipe, "red", "", KEEP)
    after = _weights(rand_pipe)
    assert patch.metadata["method"] == "null_space"
    rank = int(patch.metadata["rank"])
    assert rank == cf.null_space_projector(ck)[1] and 0 < rank < 64
    assert patch.metadata["null_dims"] == str(64 - rank)
    for name, W in before.items():
        W64, new = W.double(), after[name].double()
        assert rel(ck @ new.T, ck @ W64.T) < 1e-5  # kept keys/values unchanged (float32 weights)
        torch.testing.assert_close(new, cf.null_space_weights(W64, ce, cg @ W64.T, ck), rtol=1e-4, atol=1e-5)
        # the erased concept moved toward the guide
        assert ((ce @ new.T - cg @ W64.T).norm() < 0.9 * (ce @ W64.T - cg @ W64.T).norm()).item()


def test_uce_moves_kept_outputs_where_the_null_space_edit_does_not(rand_pipe):
    import rece_lite as rl
    from rece_lite.null_space import null_space_erase

    snap, before = rl.snapshot(rand_pipe), _weights(rand_pipe)
    ck = rl.encode(rand_pipe, KEEP).reshape(-1, 64).double()

    def kept_error() -> float:
        return max(rel(ck @ w.double().T, ck @ before[n].double().T) for n, w in _weights(rand_pipe).items())

    rl.uce_erase(rand_pipe, "red", "", KEEP)
    uce = kept_error()
    snap.apply(rand_pipe)
    null_space_erase(rand_pipe, "red", "", KEEP)
    assert kept_error() < 1e-5 < 1e-3 < uce


def test_null_space_rece_keeps_kept_outputs_through_its_epochs(rand_pipe):
    import rece_lite as rl
    from rece_lite.null_space import null_space_rece

    before = _weights(rand_pipe)
    ck = rl.encode(rand_pipe, KEEP).reshape(-1, 64).double()
    res = null_space_rece(rand_pipe, "red", "", KEEP, epochs=2)
    assert len(res.derived) == 2 and len(res.maps) == 3
    Q = res.maps[0].double() @ res.maps[1].double() @ res.maps[2].double()
    torch.testing.assert_close(res.patch.map, Q, rtol=1e-4, atol=1e-5)
    for name, w in _weights(rand_pipe).items():
        assert rel(ck @ w.double().T, ck @ before[name].double().T) < 1e-5
    # each epoch's derived embedding (what brings "red" back) is erased too: it comes out near the guide
    cg = rl.encode(rand_pipe, "")[0].double()
    c1 = res.derived[0].double()
    for name, w in _weights(rand_pipe).items():
        W0 = before[name].double()
        assert (c1 @ w.double().T - cg @ W0.T).norm() < (c1 @ W0.T - cg @ W0.T).norm() * 1.01


def test_full_rank_keep_set_is_refused_and_leaves_the_model(rand_pipe):
    from rece_lite.null_space import null_space_erase, null_space_rece

    before = _weights(rand_pipe)
    full = [torch.randn(70, 64, generator=torch.Generator().manual_seed(0))]  # 70 rows of rank 64
    for f in (null_space_erase, null_space_rece):
        with pytest.raises(cf.NoRoomError, match="span all 64 dimensions"):
            f(rand_pipe, "red", "", full)
        assert all(torch.equal(w, before[n]) for n, w in _weights(rand_pipe).items())
    # prompts kept with one row each leave room
    many = ["blue", "a green square", "a yellow star", "a photo of a grey circle", "something blue"]
    null_space_erase(rand_pipe, "a red circle", "a grey circle", many, tokens="last_subject")
    assert not all(torch.equal(w, before[n]) for n, w in _weights(rand_pipe).items())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(erase="red", keep=["red"]), ValueError, "erased and preserved"),
        (dict(erase="", keep=KEEP), ValueError, "empty prompt"),
        (dict(erase="red", keep=KEEP, rank_tol=1.5), ValueError, "rank_tol"),
        (dict(erase="red", keep=KEEP, lamb=0), ValueError, "lamb"),
        (dict(erase="red", keep=[torch.zeros(3, 5)]), ValueError, r"\(T, 64\)"),
        (dict(erase="red", keep=KEEP, tokens="some"), ValueError, "tokens"),
        (dict(erase="red", guide=["a", "b"], keep=KEEP), ValueError, "one guide"),
    ],
)
def test_bad_input_is_named_and_leaves_the_model(rand_pipe, kwargs, error, match):
    from rece_lite.null_space import null_space_erase, null_space_rece

    before = _weights(rand_pipe)
    for f in (null_space_erase, null_space_rece):
        with pytest.raises(error, match=match):
            f(rand_pipe, **kwargs)
        assert all(torch.equal(w, before[n]) for n, w in _weights(rand_pipe).items())


# ------------------------------------------------------------------- SPEED's prior filter
def test_influence_is_the_keys_and_values_moved_summed_over_matrices():
    g = torch.Generator().manual_seed(12)
    Ws = [torch.randn(o, D, generator=g, dtype=torch.float64) for o in (3, 5, 7)]
    M = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64)
    rows = torch.randn(9, D, generator=g, dtype=torch.float64)
    brute = torch.stack([sum(((W @ M - W) @ c).square().sum() for W in Ws).sqrt() for c in rows])
    torch.testing.assert_close(cf.influence(M, cf.gram(Ws), rows), brute, rtol=1e-10, atol=1e-12)
    mask = cf.filter_priors(brute)
    assert mask.tolist() == [bool(s > brute.mean()) for s in brute] and 0 < int(mask.sum()) < 9
    with pytest.raises(ValueError, match="non-empty 1-d"):
        cf.filter_priors(torch.zeros(0))


def test_prior_filter_holds_the_most_influenced_rows_of_a_full_rank_keep_set(rand_pipe):
    import rece_lite as rl
    from rece_lite import layers
    from rece_lite.null_space import null_space_erase

    full = torch.randn(70, 64, generator=torch.Generator().manual_seed(0))  # rank 64: no room unfiltered
    before = _weights(rand_pipe)
    ce, cg = rl.encode(rand_pipe, "red")[0].double(), rl.encode(rand_pipe, "")[0].double()
    free = cf.uce_weights  # independent: score each kept row by the unconstrained edit of every matrix
    moved = torch.zeros(70, dtype=torch.float64)
    for W in before.values():
        W64 = W.double()
        Wf = free(W64, ce, cg @ W64.T, None, lamb=0.1, erase_scale=1.0, preserve_scale=0.0)
        moved += ((Wf - W64) @ full.double().T).square().sum(0)
    held = moved.sqrt() > moved.sqrt().mean()
    patch = null_space_erase(rand_pipe, "red", "", [full], prior_filter=True)
    assert patch.metadata["held_rows"] == str(int(held.sum()))
    kept = full.double()[held]
    for name, m in layers.projections(rand_pipe.unet).items():
        assert rel(kept @ m.weight.detach().double().T, kept @ before[name].double().T) < 1e-5
    with pytest.raises(TypeError, match="prior_filter"):
        null_space_erase(rand_pipe, "red", "", ["blue"], prior_filter="yes")
