"""OT head: plans and values equal POT's; gradients; errors."""
import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from mgpath.ot import OTError, cosine_cost, ot_similarity, sinkhorn_log, sinkhorn_plot


def _problem(B=3, M=16, S=4, C=3, D=24, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(B, M, D, generator=g, dtype=dtype), dim=-1)
    t = F.normalize(torch.randn(S, C, D, generator=g, dtype=dtype), dim=-1)
    return v, t


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_balanced_plans_and_values_equal_pot(seed, eps):
    v, t = _problem(seed=seed)
    sim, plan, cost = ot_similarity(v, t, eps=eps, max_iter=5000, tol=1e-12, return_plan=True)
    B, C, M, S = plan.shape
    for bi in range(B):
        for c in range(C):
            ref = ot.sinkhorn(np.full(M, 1 / M), np.full(S, 1 / S), cost[bi, c].numpy(), eps,
                              method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
            np.testing.assert_allclose(plan[bi, c].numpy(), ref, atol=1e-10)
            np.testing.assert_allclose(sim[bi, c].item(), 1 - (ref * cost[bi, c].numpy()).sum(), atol=1e-10)
    # marginals and total mass
    torch.testing.assert_close(plan.sum(-1), torch.full((B, C, M), 1 / M, dtype=plan.dtype))
    torch.testing.assert_close(plan.sum(-2), torch.full((B, C, S), 1 / S, dtype=plan.dtype))
    # the POT batched backend agrees
    sim_pot = ot_similarity(v, t, eps=eps, max_iter=5000, tol=1e-12, backend="pot")
    torch.testing.assert_close(sim_pot, sim, atol=1e-9, rtol=0)


def test_non_uniform_marginals_equal_pot():
    v, t = _problem(B=2, M=10, S=3, C=2)
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 10, generator=g, dtype=torch.float64) + 0.1
    a = a / a.sum(1, keepdim=True)
    b = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    _sim, plan, cost = ot_similarity(v, t, a=a, b=b, max_iter=5000, tol=1e-12, return_plan=True)
    ref = ot.sinkhorn(a[1].numpy(), b.numpy(), cost[1, 0].numpy(), 0.1, numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(plan[1, 0].numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("reg_m", [0.5, 2.0])
def test_unbalanced_equals_pot(reg_m):
    v, t = _problem(B=2, C=2)
    cost = cosine_cost(v, t).reshape(4, 16, 4)
    plan, _ = sinkhorn_log(cost, eps=0.1, reg_m=reg_m, max_iter=20000, tol=1e-14)
    for p in range(4):
        ref = ot.unbalanced.sinkhorn_unbalanced(np.full(16, 1 / 16), np.full(4, 0.25), cost[p].numpy(), 0.1, reg_m,
                                                numItermax=20000, stopThr=1e-15)
        np.testing.assert_allclose(plan[p].numpy(), ref, atol=1e-10)
        assert ref.sum() < 0.999  # mass is not conserved
    sim_t = ot_similarity(v, t, reg_m=reg_m, max_iter=20000, tol=1e-13)
    sim_p = ot_similarity(v, t, reg_m=reg_m, max_iter=20000, tol=1e-15, backend="pot")
    torch.testing.assert_close(sim_t, sim_p, atol=1e-8, rtol=0)


def test_float32_default_settings_close_to_converged():
    v, t = _problem(dtype=torch.float32)
    sim = ot_similarity(v, t)  # eps 0.1, 100 iterations, tol 1e-2
    ref = ot_similarity(v.double(), t.double(), max_iter=5000, tol=1e-12)
    assert sim.dtype == torch.float32 and sim.shape == (3, 3)
    torch.testing.assert_close(sim.double(), ref, atol=2e-3, rtol=0)


def test_plot_backend_matches_official_algorithm():
    v, t = _problem(B=1, M=64, S=4, C=2, dtype=torch.float32)
    cost = cosine_cost(v, t).reshape(2, 64, 4)
    # independent re-statement of the official loop (single class-batch stopping check)
    K = torch.exp(-cost / 0.1)
    r, c = torch.ones(2, 64), torch.ones(2, 4)
    for _ in range(100):
        r0 = r
        r = (1 / 64) / torch.bmm(K, c[..., None])[..., 0]
        c = (1 / 4) / torch.bmm(K.transpose(1, 2), r[..., None])[..., 0]
        if (r - r0).abs().mean() < 1e-2:
            break
    ref = r[:, :, None] * K * c[:, None, :]
    torch.testing.assert_close(sinkhorn_plot(cost), ref)
    sim = ot_similarity(v, t, backend="plot")
    torch.testing.assert_close(sim[0], 1 - (ref * cost).sum((1, 2)))


def test_gradient_detached_plan_is_envelope():
    v, t = _problem(B=1, C=2)
    v.requires_grad_(True)
    sim, plan, _cost = ot_similarity(v, t, tol=1e-10, max_iter=2000, return_plan=True)
    assert not plan.requires_grad
    sim.sum().backward()
    # d/dv of sum_c sum_ms T[m,s] cos(v_m, t_s) with T constant
    expected = torch.einsum("cms,scd->md", plan[0], t)
    torch.testing.assert_close(v.grad[0], expected)


def test_gradient_through_plan_when_not_detached():
    v, t = _problem(B=1, C=2)
    v1 = v.clone().requires_grad_(True)
    ot_similarity(v1, t, tol=1e-10, max_iter=500, detach_plan=False).sum().backward()
    v2 = v.clone().requires_grad_(True)
    ot_similarity(v2, t, tol=1e-10, max_iter=500).sum().backward()
    assert torch.isfinite(v1.grad).all() and not torch.allclose(v1.grad, v2.grad)
    with pytest.raises(ValueError, match="backend='pot'"):
        ot_similarity(v, t, backend="pot", detach_plan=False)


def test_nan_and_nonconvergence_raise():
    v, t = _problem()
    v_nan = v.clone()
    v_nan[0, 0, 0] = float("nan")
    with pytest.raises(OTError, match="NaN"):
        ot_similarity(v_nan, t)
    with pytest.raises(OTError, match="did not converge"):
        ot_similarity(v, t, eps=0.005, max_iter=2, tol=1e-12)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sim = ot_similarity(v, t, eps=0.005, max_iter=2, tol=1e-12, on_nonconvergence="warn")
    assert torch.isfinite(sim).all()
    with pytest.raises(ValueError, match="dim"):
        ot_similarity(v, t[..., :5])
    with pytest.raises(ValueError, match="backend"):
        ot_similarity(v, t, backend="nope")


def test_any_number_of_classes_and_sets():
    for S, C in [(1, 2), (4, 3), (2, 7)]:
        v, t = _problem(B=2, S=S, C=C)
        sim = ot_similarity(v, t)
        assert sim.shape == (2, C)
        if S == 1:  # one prompt set: the plan is uniform over tokens -> mean cosine
            expected = torch.einsum("bmd,cd->bcm", v, t[0]).mean(-1)
            torch.testing.assert_close(sim, expected)
