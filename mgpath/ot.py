"""Optimal-transport similarity between visual tokens and class prompt sets (the MGPATH/PLOT head).

For a slide ``b`` and a class ``c`` the cost between its ``M`` visual tokens and the ``S`` prompt-set text
features of the class is ``C = 1 - cos`` (M, S). The entropic plan ``T*`` between the marginals ``a`` (over
tokens, uniform by default) and ``b`` (over prompt sets) is computed with

- ``backend="torch"`` (default): a batched log-domain Sinkhorn written here, all ``B * C`` problems at once on
  the tensors' device; tested against POT;
- ``backend="pot"``: POT's batched solver ``ot.batch.solve_batch`` (balanced) or a loop over
  ``ot.unbalanced.sinkhorn_unbalanced`` (unbalanced);
- ``backend="plot"``: the official MGPATH/PLOT Sinkhorn (plain scaling, stop when the mean change of the row
  scaling is below ``tol``, a single check over the whole batch), for reproducing official checkpoints;
- ``backend="uniform"``: no transport, the product coupling ``a b^T`` (the similarity is then the mean
  cosine: the paper's "without OT" ablation).

The similarity is ``1 - <T*, C>`` (B, C). The plan is a constant for the gradient by default
(``detach_plan=True``, the envelope-theorem gradient PLOT and MGPATH use). NaN plans and non-convergence raise
:class:`OTError`; nothing here returns ``None``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SCALING_SAFE_RANGE",
    "OTConfig",
    "OTError",
    "balanced_residual",
    "cosine_cost",
    "ot_similarity",
    "sinkhorn_log",
    "sinkhorn_plot",
    "sinkhorn_pot",
    "transport_plans",
    "unbalanced_residual",
]


class OTError(RuntimeError):
    """The transport problem could not be solved (NaN values or no convergence)."""


@dataclass
class OTConfig:
    """Settings of the OT head (all configurable from YAML through the model's keywords).

    Parameters
    ----------
    eps : entropic regularisation (official: 0.1).
    max_iter : maximum Sinkhorn iterations (official: 100).
    tol : stopping tolerance; the L1 error of the token marginal for the balanced log solver, the largest change
        of the scaled dual potentials for the unbalanced one, PLOT's ``mean|r - r_prev|`` for ``backend="plot"``.
    reg_m : marginal relaxation of unbalanced OT (KL); ``None`` gives balanced OT.
    backend : ``"torch"``, ``"pot"``, ``"plot"`` or ``"uniform"`` (no OT: mean cosine).
    detach_plan : hold the plan constant for the gradient.
    on_nonconvergence : ``"raise"`` (default), ``"warn"`` or ``"ignore"``.
    solver : balanced torch backend: ``"auto"`` (exp-domain iteration when exact, else log domain),
        ``"log"`` or ``"scaling"``.
    """

    eps: float = 0.1
    max_iter: int = 100
    tol: float = 1e-2
    reg_m: float | None = None
    backend: str = "torch"
    detach_plan: bool = True
    on_nonconvergence: str = "raise"
    solver: str = "auto"


def cosine_cost(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine-distance costs of every (slide, class) problem.

    Parameters
    ----------
    visual : (B, M, D) L2-normalised visual tokens.
    text : (S, C, D) L2-normalised text features (S prompt sets of C classes).

    Returns
    -------
    (B, C, M, S) cost ``1 - cos``.
    """
    if visual.dim() != 3 or text.dim() != 3:
        raise ValueError(f"mgpath/ot.py: visual must be (B, M, D) and text (S, C, D); got {tuple(visual.shape)} "
                         f"and {tuple(text.shape)}")
    if visual.shape[-1] != text.shape[-1]:
        raise ValueError(f"mgpath/ot.py: visual dim {visual.shape[-1]} != text dim {text.shape[-1]}; the image "
                         "and text adaptors must project to the same embed_dim")
    return 1.0 - torch.einsum("bmd,scd->bcms", visual, text)


def _marginal(w: torch.Tensor | None, batch: int, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """Marginal weights as (batch, n), uniform when ``w`` is None."""
    if w is None:
        return torch.full((batch, n), 1.0 / n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.dim() == 1:
        w = w.expand(batch, n)
    if w.shape != (batch, n):
        raise ValueError(f"mgpath/ot.py: marginal {name} has shape {tuple(w.shape)}, expected ({n},) or ({batch}, {n})")
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"mgpath/ot.py: marginal {name} must be finite and non-negative")
    return w


def _check_plan(plan: torch.Tensor, where: str) -> None:
    if not torch.isfinite(plan).all():
        raise OTError(f"mgpath/ot.py: {where} produced NaN/inf in the transport plan; check the inputs for NaN "
                      "(features, weights) or increase eps")


def _nonconverged(msg: str, mode: str) -> None:
    if mode == "raise":
        raise OTError(msg + "; raise max_iter, loosen tol or increase eps (or set on_nonconvergence='warn')")
    if mode == "warn":
        import warnings
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _kernel(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, reg_m: float | None):
    """Log kernel ``-C / eps`` (POT's ``reg_type="kl"`` adds ``log a + log b`` in the unbalanced case)."""
    log_k = -cost / eps
    if reg_m is not None:
        log_k = log_k + torch.log(a)[:, :, None] + torch.log(b)[:, None, :]
    return log_k


def _unbalanced_update(log_k, log_a, log_b, f, g, fi):
    """One plain unbalanced Sinkhorn update of the log scalings ``(f, g)`` (POT's ``sinkhorn_unbalanced``)."""
    f = fi * (log_a - torch.logsumexp(log_k + g[:, None, :], dim=2))
    g = fi * (log_b - torch.logsumexp(log_k + f[:, :, None], dim=1))
    return f, g


def unbalanced_residual(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                        eps: float, reg_m: float) -> float:
    """Convergence rule of unbalanced OT, shared by every backend: the largest change of the log scalings
    ``(f, g)`` (P, M) / (P, N) under one plain Sinkhorn update (0 at the optimum)."""
    log_k = _kernel(cost, a, b, eps, reg_m)
    f1, g1 = _unbalanced_update(log_k, torch.log(a), torch.log(b), f, g, reg_m / (reg_m + eps))
    return float(torch.maximum((f1 - f).abs().amax(), (g1 - g).abs().amax()).detach())


def balanced_residual(plan: torch.Tensor, a: torch.Tensor) -> float:
    """Convergence rule of balanced OT, shared by every backend: the largest (over problems) L1 error of the
    token marginal of the plan (P, M, N) against ``a`` (P, M) (the prompt-set marginal is exact after the last
    update)."""
    return float((plan.sum(2) - a).abs().sum(1).max().detach())


#: largest cost range / eps for which the plain (exp-domain) Sinkhorn is exact in each precision: the
#: kernel ``exp(-(C - min C) / eps)`` then stays far from underflow and the scalings far from overflow.
SCALING_SAFE_RANGE = {torch.float16: 5.0, torch.bfloat16: 30.0, torch.float32: 30.0, torch.float64: 300.0}


def _choose_solver(cost: torch.Tensor, eps: float, solver: str) -> str:
    if solver not in ("auto", "log", "scaling"):
        raise ValueError(f"mgpath/ot.py: unknown solver {solver!r}; use 'auto', 'log' or 'scaling'")
    if solver != "auto":
        return solver
    span = float((cost.amax((1, 2)) - cost.amin((1, 2))).max().detach()) / eps if cost.numel() else 0.0
    return "scaling" if span <= SCALING_SAFE_RANGE.get(cost.dtype, 30.0) else "log"


def sinkhorn_log(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2, reg_m: float | None = None,
                 check_every: int | None = None, on_nonconvergence: str = "raise",
                 solver: str = "auto") -> tuple[torch.Tensor, int]:
    """Batched Sinkhorn (balanced, or unbalanced with KL marginal penalty ``reg_m``).

    Balanced: the same plan as ``ot.sinkhorn(a, b, M, eps)``; stops when :func:`balanced_residual` < ``tol``.
    ``solver="auto"`` uses the plain exp-domain iteration when it is exact for the problem (cost range / eps
    within :data:`SCALING_SAFE_RANGE`; 3-4x faster at MGPATH's size), the log-domain one otherwise.

    Unbalanced: the same plan as ``ot.unbalanced.sinkhorn_unbalanced(a, b, M, eps, reg_m)``
    (``reg_type="kl"``), solved in the log domain with the translation-invariant acceleration (after each
    update the potentials are shifted by the optimal constant ``(f + l, g - l)``, Séjourné, Vialard & Peyré,
    AISTATS 2022), which removes the slow ``reg_m / (reg_m + eps)`` contraction of the plain iteration; stops
    when :func:`unbalanced_residual` < ``tol``.

    Parameters
    ----------
    cost : (P, M, N) cost matrices.
    a : (M,) or (P, M) source weights; uniform if None.
    b : (N,) or (P, N) target weights; uniform if None.
    check_every : test convergence every this many iterations; None: iterations 1-4, then every 5th.

    Returns
    -------
    plan : (P, M, N); n_iter : iterations run.
    """
    if cost.dim() != 3:
        raise ValueError(f"mgpath/ot.py: cost must be (P, M, N), got {tuple(cost.shape)}")
    P, M, N = cost.shape
    a = _marginal(a, P, M, cost, "a")
    b = _marginal(b, P, N, cost, "b")
    if reg_m is None:
        if _choose_solver(cost, eps, solver) == "scaling":
            plan, it, err = _balanced_scaling(cost, a, b, eps, max_iter, tol, check_every)
        else:
            plan, it, err = _balanced_log(cost, a, b, eps, max_iter, tol, check_every)
    else:
        plan, it, err = _unbalanced_ti(cost, a, b, eps, reg_m, max_iter, tol, check_every)
    _check_plan(plan, "sinkhorn_log")
    if not err < tol:
        _nonconverged(f"mgpath/ot.py: Sinkhorn did not converge in {max_iter} iterations (error {err:.3g} >= "
                      f"tol {tol})", on_nonconvergence)
    return plan, it


def _finite(err: float) -> float:
    if not math.isfinite(err):
        raise OTError("mgpath/ot.py: Sinkhorn diverged (NaN/inf potentials); check the inputs for NaN")
    return err


def _due(it: int, check_every: int | None, max_iter: int) -> bool:
    """Convergence test at this iteration? ``None``: iterations 1-4, then every 5th (the test's host sync
    costs about as much as an iteration at MGPATH's size)."""
    if it == max_iter:
        return True
    return it % check_every == 0 if check_every else (it <= 4 or it % 5 == 0)


def _balanced_scaling(cost, a, b, eps, max_iter, tol, check_every):
    """Exp-domain iteration ``u = a / K v``, ``v = b / K^T u`` on the shifted kernel (same plan)."""
    K = torch.exp(-(cost - cost.amin((1, 2), keepdim=True)) / eps)
    Kt = K.transpose(1, 2).contiguous()
    a3, b3 = a[:, :, None], b[:, :, None]
    u = a3 / K.sum(2, keepdim=True)  # (P, M, 1): first update from v = 1
    err, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        v = b3 / torch.bmm(Kt, u)
        kv = torch.bmm(K, v)
        if _due(it, check_every, max_iter):  # row marginal of the current plan is u * K v
            err = _finite(float((u * kv - a3).abs().sum(1).max().detach()))
            if err < tol:
                break
        if it < max_iter:
            u = a3 / kv
    return u * K * v.transpose(1, 2), it, err


def _balanced_log(cost, a, b, eps, max_iter, tol, check_every):
    log_a, log_b, log_k = torch.log(a), torch.log(b), -cost / eps
    f = log_a - torch.logsumexp(log_k, dim=2)
    err, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        g = log_b - torch.logsumexp(log_k + f[:, :, None], dim=1)
        lse = torch.logsumexp(log_k + g[:, None, :], dim=2)
        if _due(it, check_every, max_iter):
            err = _finite(float((torch.exp(f + lse) - a).abs().sum(1).max().detach()))
            if err < tol:
                break
        if it < max_iter:
            f = log_a - lse
    return torch.exp(log_k + f[:, :, None] + g[:, None, :]), it, err


def _unbalanced_ti(cost, a, b, eps, reg_m, max_iter, tol, check_every):
    log_a, log_b = torch.log(a), torch.log(b)
    log_k = _kernel(cost, a, b, eps, reg_m)
    fi, r = reg_m / (reg_m + eps), reg_m / eps
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    err, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        f1, g1 = _unbalanced_update(log_k, log_a, log_b, f, g, fi)
        if _due(it, check_every, max_iter):
            err = _finite(float(torch.maximum((f1 - f).abs().amax(), (g1 - g).abs().amax()).detach()))
        if err < tol:
            f, g = f1, g1
            break
        # optimal translation (f + l, g - l) of the dual: l = r/2 log(<a, e^{-f/r}> / <b, e^{-g/r}>)
        lam = 0.5 * r * (torch.logsumexp(log_a - f1 / r, 1) - torch.logsumexp(log_b - g1 / r, 1))
        f, g = f1 + lam[:, None], g1 - lam[:, None]
    return torch.exp(log_k + f[:, :, None] + g[:, None, :]), it, err


def sinkhorn_plot(cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2) -> torch.Tensor:
    """The official MGPATH/PLOT Sinkhorn: uniform marginals, scaling updates, PLOT's stopping rule.

    Parameters
    ----------
    cost : (P, M, N).

    Returns
    -------
    (P, M, N) plan ``diag(r) K diag(c)``.
    """
    P, M, N = cost.shape
    K = torch.exp(-cost / eps)
    a = torch.full((P, M), 1.0 / M, dtype=cost.dtype, device=cost.device)
    b = torch.full((P, N), 1.0 / N, dtype=cost.dtype, device=cost.device)
    r, c = torch.ones_like(a), torch.ones_like(b)
    for _ in range(max_iter):
        r0 = r
        r = a / torch.einsum("pmn,pn->pm", K, c)
        c = b / torch.einsum("pmn,pm->pn", K, r)
        if float((r - r0).abs().mean()) < tol:
            break
    plan = r[:, :, None] * K * c[:, None, :]
    _check_plan(plan, "sinkhorn_plot")
    return plan


def sinkhorn_pot(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2, reg_m: float | None = None,
                 on_nonconvergence: str = "raise") -> torch.Tensor:
    """Plans from POT: ``ot.batch.solve_batch`` (balanced) or ``ot.unbalanced.sinkhorn_unbalanced`` with the
    translation-invariant method per problem (unbalanced).

    Non-convergence is judged by the same rule as the torch backend (:func:`balanced_residual` or
    :func:`unbalanced_residual` < ``tol``); POT is asked for a tolerance at which its own (L2) stopping test
    implies that rule.

    Parameters
    ----------
    cost : (P, M, N); a : (M,) or (P, M); b : (N,) or (P, N).

    Returns
    -------
    (P, M, N) plan (no gradient: POT is called on detached tensors).
    """
    import ot

    P, M, N = cost.shape
    c = cost.detach()
    a = _marginal(a, P, M, c, "a")
    b = _marginal(b, P, N, c, "b")
    if reg_m is None:
        from ot.batch import solve_batch

        # POT stops on the L2 norm of the marginal error; L1 <= sqrt(M) * L2
        res = solve_batch(c, reg=eps, a=a, b=b, max_iter=max_iter, tol=tol / math.sqrt(M),
                          method="log_sinkhorn", grad="detach")
        plan = res.plan
        _check_plan(plan, "POT solve_batch")
        err = balanced_residual(plan, a)
    else:
        plans, fs, gs = [], [], []
        for p in range(P):
            pl, log = ot.unbalanced.sinkhorn_unbalanced(a[p], b[p], c[p], eps, reg_m, numItermax=max_iter,
                                                        stopThr=tol / 10, log=True,
                                                        method="sinkhorn_translation_invariant")
            plans.append(pl)
            fs.append(log["logu"])
            gs.append(log["logv"])
        plan = torch.stack(plans)
        _check_plan(plan, "POT sinkhorn_unbalanced")
        err = unbalanced_residual(c, a, b, torch.stack(fs), torch.stack(gs), eps, reg_m)
    if not err < tol:
        _nonconverged(f"mgpath/ot.py: POT did not converge in {max_iter} iterations (error {err:.3g} >= tol "
                      f"{tol})", on_nonconvergence)
    return plan


def transport_plans(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                    config: OTConfig | None = None) -> torch.Tensor:
    """Entropic plans of a batch of problems with the configured backend.

    Parameters
    ----------
    cost : (P, M, N).

    Returns
    -------
    (P, M, N) plan; detached if ``config.detach_plan``.
    """
    cfg = config or OTConfig()
    if cfg.eps <= 0:
        raise ValueError(f"mgpath/ot.py: eps must be > 0, got {cfg.eps}")
    if not torch.isfinite(cost).all():
        raise OTError("mgpath/ot.py: the OT cost contains NaN/inf; check the slide features and the text "
                      "features for NaN")
    src = cost.detach() if cfg.detach_plan else cost
    if cfg.backend == "torch":
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.detach_plan):
            plan, _ = sinkhorn_log(src, a, b, cfg.eps, cfg.max_iter, cfg.tol, cfg.reg_m,
                                   on_nonconvergence=cfg.on_nonconvergence, solver=cfg.solver)
    elif cfg.backend == "pot":
        if not cfg.detach_plan:
            raise ValueError("mgpath/ot.py: backend='pot' gives detached plans; use backend='torch' with "
                             "detach_plan=False to differentiate through Sinkhorn")
        plan = sinkhorn_pot(src, a, b, cfg.eps, cfg.max_iter, cfg.tol, cfg.reg_m, cfg.on_nonconvergence)
    elif cfg.backend == "plot":
        if a is not None or b is not None or cfg.reg_m is not None:
            raise ValueError("mgpath/ot.py: backend='plot' is the official balanced, uniform-marginal solver")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.detach_plan):
            plan = sinkhorn_plot(src, cfg.eps, cfg.max_iter, cfg.tol)
    elif cfg.backend == "uniform":  # no transport: the product coupling a b^T (the "no OT" ablation)
        P, M, N = cost.shape
        plan = _marginal(a, P, M, src, "a")[:, :, None] * _marginal(b, P, N, src, "b")[:, None, :]
    else:
        raise ValueError(f"mgpath/ot.py: unknown OT backend {cfg.backend!r}; use 'torch', 'pot', 'plot' or "
                         "'uniform'")
    return plan.detach() if cfg.detach_plan else plan


def ot_similarity(visual: torch.Tensor, text: torch.Tensor, eps: float = 0.1, max_iter: int = 100,
                  tol: float = 1e-2, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                  reg_m: float | None = None, backend: str = "torch", detach_plan: bool = True,
                  on_nonconvergence: str = "raise", return_plan: bool = False, config: OTConfig | None = None):
    """OT similarity ``1 - <T*, 1 - cos>`` between each slide's visual tokens and each class's prompt sets.

    Parameters
    ----------
    visual : (B, M, D) L2-normalised visual tokens.
    text : (S, C, D) L2-normalised text features.
    a : (M,) or (B, M) token weights; b : (S,) prompt-set weights; uniform if None.
    reg_m : KL marginal relaxation (unbalanced OT) or None (balanced).
    config : an :class:`OTConfig`; when given it replaces ``eps`` ... ``on_nonconvergence``.

    Returns
    -------
    sim : (B, C); with ``return_plan`` also the plans (B, C, M, S) and costs (B, C, M, S).
    """
    if not torch.isfinite(visual).all():
        raise OTError("mgpath/ot.py: visual tokens contain NaN/inf; check the slide features for NaN")
    if not torch.isfinite(text).all():
        raise OTError("mgpath/ot.py: text features contain NaN/inf")
    cost = cosine_cost(visual, text)
    B, C, M, S = cost.shape
    cfg = config or OTConfig(eps, max_iter, tol, reg_m, backend, detach_plan, on_nonconvergence)
    if a is not None:
        a = torch.as_tensor(a).to(cost)
        if a.dim() == 2:  # per-slide token weights -> one row per (slide, class) problem
            a = a.repeat_interleave(C, 0)
    plan = transport_plans(cost.reshape(B * C, M, S), a, b, cfg).reshape(B, C, M, S)
    sim = 1.0 - (plan * cost).sum((2, 3))
    if return_plan:
        return sim, plan, cost
    return sim
