"""Amulet's mixture strength k(T, alpha, lambda, eta) over the paper's sweeps, with its regimes.

Amulet is Linear Alignment with ratio ``k = amulet_ratio(T, alpha, lambda, eta)``
(README: Methods). For large t the recursion reads ``k ~ alpha (1 + mean k) / lambda``;
with ``k ~ c t^p`` the mean is ``c t^p / (p + 1)``, so ``p = alpha / lambda - 1``:

- ``alpha < lambda``: k converges to the fixed point ``alpha / (lambda - alpha)``;
- ``alpha = lambda``: p = 0, and k grows like ``ln T`` (``k(2T) - k(T) -> ln 2``);
- ``alpha > lambda``: k diverges like ``T^(alpha / lambda - 1)``.

CoSteer (Amulet's successor, a small model steering a large one) collapses the same way, to
``log_softmax(b + c_T D)``: each row also gives ``c_T = costeer_ratio(T, alpha, beta, lambda,
eta)`` at the same hyperparameters and CoSteer's beta 1, and ``c_T - 1``, the LA ratio it is
when the small model is the large one (rules/costeer.py). Same regimes, limit
``beta / (lambda - alpha)``.

Pure functions build the table; ``plot_k`` draws it (matplotlib, Agg).
"""

from __future__ import annotations

import math
from pathlib import Path

from DecodingMethodsModels.rules.combine import amulet_ratio
from DecodingMethodsModels.rules.costeer import costeer_ratio

COSTEER_BETA = 1.0  # CoSteer's default beta, for its c_T beside Amulet's k

DEFAULTS = {"T": 60, "eta": 10.0, "alpha": 2.0, "lambda": 2.0}
SWEEPS = {  # the paper's sweeps, the other three at their defaults
    "T": tuple(range(0, 101, 20)),
    "eta": tuple(float(e) for e in range(2, 21, 2)),
    "alpha": tuple(float(a) for a in range(1, 11)),
    "lambda": tuple(float(m) for m in range(1, 11)),
}
CONVERGES, LOG_GROWTH, DIVERGES = "converges", "grows like ln T", "diverges"


def regime(alpha: float, player_lambda: float) -> str:
    """``"converges"`` if alpha < lambda, ``"grows like ln T"`` if equal, else ``"diverges"``."""
    if math.isclose(alpha, player_lambda):
        return LOG_GROWTH
    return CONVERGES if alpha < player_lambda else DIVERGES


def limit_of_k(alpha: float, player_lambda: float) -> float:
    """``lim_{T->inf} k = alpha / (lambda - alpha)`` for alpha < lambda, else ``inf``."""
    if regime(alpha, player_lambda) != CONVERGES:
        return math.inf
    return alpha / (player_lambda - alpha)


def growth_exponent(alpha: float, player_lambda: float) -> float:
    """``p`` in ``k ~ T^p`` for alpha > lambda: ``p = alpha / lambda - 1`` (0 otherwise)."""
    return max(alpha / player_lambda - 1.0, 0.0)


def describe_regime(alpha: float, player_lambda: float) -> str:
    """The regime with its closed-form limit, e.g. ``"converges to 0.333"``."""
    kind = regime(alpha, player_lambda)
    if kind == CONVERGES:
        return f"converges to alpha/(lambda-alpha) = {limit_of_k(alpha, player_lambda):.4g}"
    if kind == DIVERGES:
        return f"diverges like T^{growth_exponent(alpha, player_lambda):.3g}"
    return "grows like ln T"


def k_row(T: int, eta: float, alpha: float, player_lambda: float, swept: str) -> dict:
    """One row of the table: the four hyperparameters, k, its LA / CFG / PAD equivalents and
    the regime of (alpha, lambda)."""
    k = amulet_ratio(T, alpha, player_lambda, eta)
    c = costeer_ratio(T, alpha, COSTEER_BETA, player_lambda, eta)
    return {
        "swept": swept, "T": T, "eta": eta, "alpha": alpha, "lambda": player_lambda, "k": k,
        "cfg_guidance_scale": 1.0 + k, "pad_implicit_w": 1.0 + k,
        "regime": regime(alpha, player_lambda),
        "limit": limit_of_k(alpha, player_lambda),
        "regime_detail": describe_regime(alpha, player_lambda),
        "costeer_c_T": c, "costeer_la_ratio": c - 1.0,
    }


def k_table(sweeps: dict[str, tuple] = SWEEPS, defaults: dict = DEFAULTS) -> list[dict]:
    """Rows of k over each one-parameter sweep (the others at ``defaults``), then the full
    alpha x lambda grid at the default T and eta (``swept = "alpha,lambda"``)."""
    rows = []
    for name, values in sweeps.items():
        for value in values:
            params = {**defaults, name: value}
            rows.append(k_row(int(params["T"]), params["eta"], params["alpha"],
                              params["lambda"], name))
    for alpha in sweeps["alpha"]:
        for player_lambda in sweeps["lambda"]:
            rows.append(k_row(int(defaults["T"]), defaults["eta"], alpha, player_lambda,
                              "alpha,lambda"))
    return rows


def k_curves(pairs: tuple[tuple[float, float], ...] = ((1.0, 2.0), (2.0, 2.0), (3.0, 2.0)),
             T_max: int = 100, eta: float = DEFAULTS["eta"]) -> list[dict]:
    """k(T) for T = 0..T_max for each (alpha, lambda) pair: one curve per regime."""
    curves = []
    for alpha, player_lambda in pairs:
        curves.append({
            "alpha": alpha, "lambda": player_lambda, "eta": eta,
            "regime": regime(alpha, player_lambda), "limit": limit_of_k(alpha, player_lambda),
            "T": list(range(T_max + 1)),
            "k": [amulet_ratio(T, alpha, player_lambda, eta) for T in range(T_max + 1)],
        })
    return curves


def markdown_tables(rows: list[dict]) -> str:
    """The one-parameter sweeps as markdown tables (one row of k per sweep)."""
    parts = []
    for name in SWEEPS:
        sweep = [r for r in rows if r["swept"] == name]
        header = "| " + name + " | " + " | ".join(f"{r[name]:g}" for r in sweep) + " |"
        ks = "| k | " + " | ".join(f"{r['k']:.4g}" for r in sweep) + " |"
        cs = "| CoSteer c_T | " + " | ".join(f"{r['costeer_c_T']:.4g}" for r in sweep) + " |"
        regimes = "| regime | " + " | ".join(r["regime"] for r in sweep) + " |"
        rule = "|---|" + "---|" * len(sweep)
        parts.append("\n".join([header, rule, ks, cs, regimes]))
    return "\n\n".join(parts)


def plot_k(rows: list[dict], curves: list[dict], path: Path) -> None:
    """Three panels: k(T) per regime with the closed-form limits, k over eta, and log10 k over
    the alpha x lambda grid with the regimes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for curve in curves:
        label = f"alpha={curve['alpha']:g}, lambda={curve['lambda']:g}: {curve['regime']}"
        line, = ax.plot(curve["T"], curve["k"], label=label)
        if math.isfinite(curve["limit"]):
            ax.axhline(curve["limit"], ls="--", lw=0.8, color=line.get_color())
        elif curve["regime"] == LOG_GROWTH:
            T = np.arange(1, len(curve["T"]))
            offset = curve["k"][-1] - math.log(T[-1])
            ax.plot(T, np.log(T) + offset, ls=":", lw=0.8, color=line.get_color(),
                    label="ln T + c")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set(xlabel="T (iterations)", ylabel="k = LA ratio", title=f"k(T), eta={curves[0]['eta']:g}")
    ax.legend(fontsize=7)
    ax = axes[1]
    eta_rows = [r for r in rows if r["swept"] == "eta"]
    ax.plot([r["eta"] for r in eta_rows], [r["k"] for r in eta_rows], marker="o")
    ax.set(xlabel="eta", ylabel="k", title=f"k(eta), T={DEFAULTS['T']}, alpha=lambda=2")
    ax = axes[2]
    grid = [r for r in rows if r["swept"] == "alpha,lambda"]
    alphas = sorted({r["alpha"] for r in grid})
    lambdas = sorted({r["lambda"] for r in grid})
    values = np.array([[math.log10(max(r["k"], 1e-12)) for r in grid if r["alpha"] == a]
                       for a in alphas])  # rows alpha, columns lambda
    image = ax.imshow(values, origin="lower", cmap="viridis", aspect="auto",
                      extent=(lambdas[0] - .5, lambdas[-1] + .5, alphas[0] - .5, alphas[-1] + .5))
    ax.plot([lambdas[0] - .5, lambdas[-1] + .5], [alphas[0] - .5, alphas[-1] + .5], "w--", lw=0.8)
    ax.text(7.5, 2.5, "converges\nalpha<lambda", color="w", ha="center", fontsize=8)
    ax.text(2.5, 8.0, "diverges\nalpha>lambda", color="w", ha="center", fontsize=8)
    ax.set(xlabel="lambda", ylabel="alpha",
           title=f"log10 k, T={DEFAULTS['T']}, eta={DEFAULTS['eta']:g} (diagonal: ln T)")
    fig.colorbar(image, ax=ax)
    fig.suptitle("Amulet = LA with ratio k(T, alpha, lambda, eta); CFG guidance_scale = "
                 "implicit PAD w = 1 + k", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
