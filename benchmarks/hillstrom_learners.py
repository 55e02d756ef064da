"""The learners of the Hillstrom benchmark: each fits on (x, action, propensity, y) and predicts
(n, n_actions) expected outcomes. `TLearner`: one LightGBM model per arm; `NetLearner`: the model, a
small network with the action-outcome head of `predictor.model.JourneyModel` trained like
`training.sequence.journey_loss` trains it (inverse-propensity-weighted loss of the logged action)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.hillstrom_data import ACTION_NAMES, ARMS, MODEL_SINGLE

OutcomeKind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class LGBMParams:
    """LightGBM settings of the T-learner (strongly regularised: conversions are about 1 %)."""

    learning_rate: float = 0.03
    num_leaves: int = 7
    min_child_samples: int = 200
    lambda_l2: float = 10.0
    feature_fraction: float = 0.8
    max_rounds: int = 1_000
    early_stopping_rounds: int = 50
    valid_share: float = 0.2
    num_threads: int = 1


class TLearner:
    """One LightGBM model per action on the rows that received it; predicts every action's outcome."""

    def __init__(self, kind: OutcomeKind, params: LGBMParams | None = None, seed: int = 0) -> None:
        self.kind = kind
        self.params = params or LGBMParams()
        self.seed = seed

    def fit(self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> TLearner:
        """Fits one model per action, early-stopped on a stratified inner validation split of its rows.

        `propensity` is unused beyond the check that every action was logged: each arm's rows are a random
        third of the customers, so an unweighted model per arm already stands for everyone.
        """
        del propensity
        p = self.params
        self.models_: list[lgb.Booster | float] = []
        self.rounds_: list[int] = []
        for a in range(len(ARMS)):
            rows = np.flatnonzero(action == a)
            if len(rows) == 0:
                raise ValueError(f"no training rows received action {ARMS[a]!r}")
            ya = y[rows]
            if (self.kind == "binary" and len(np.unique(ya)) < 2) or len(rows) < 50:
                self.models_.append(float(ya.mean()))
                self.rounds_.append(0)
                continue
            strata = (ya > 0).astype(int) if self.kind == "binary" else None
            fit_rows, valid_rows = train_test_split(
                rows, test_size=p.valid_share, random_state=self.seed + a, stratify=strata
            )
            params = {
                "objective": "binary" if self.kind == "binary" else "regression",
                "learning_rate": p.learning_rate,
                "num_leaves": p.num_leaves,
                "min_child_samples": p.min_child_samples,
                "lambda_l2": p.lambda_l2,
                "feature_fraction": p.feature_fraction,
                "feature_fraction_seed": self.seed,
                "bagging_seed": self.seed,
                "seed": self.seed,
                "deterministic": True,
                "force_col_wise": True,
                "num_threads": p.num_threads,
                "verbose": -1,
            }
            train_set = lgb.Dataset(x[fit_rows], label=y[fit_rows])
            valid_set = lgb.Dataset(x[valid_rows], label=y[valid_rows], reference=train_set)
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=p.max_rounds,
                valid_sets=[valid_set],
                callbacks=[lgb.early_stopping(p.early_stopping_rounds, verbose=False)],
            )
            best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
            self.models_.append(lgb.Booster(model_str=booster.model_to_string(num_iteration=best)))
            self.rounds_.append(int(best))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_actions) predicted outcome of each action."""
        cols = [
            np.full(len(x), m) if isinstance(m, float) else np.asarray(m.predict(x), dtype=np.float64)
            for m in self.models_
        ]
        return np.column_stack(cols)

    def variants(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
        """No ablations."""
        del x
        return {}

    def info(self) -> dict[str, Any]:
        """Boosting rounds per arm."""
        return {"rounds": dict(zip(ACTION_NAMES, self.rounds_, strict=True))}


class ActionOutcomeNet(nn.Module):
    """A shared encoder of the customer's features into a state, and the action-outcome head of
    `predictor.model.JourneyModel`: one linear layer giving a logit of P(outcome | action) per action."""

    def __init__(self, n_features: int, d_model: int = 32, n_actions: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, d_model),
            nn.GELU(),
        )
        self.norm = nn.LayerNorm(d_model)
        self.action_head = nn.Linear(d_model, n_actions)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n_features) -> (B, n_actions) logits (or raw means for a continuous outcome)."""
        return self.action_head(self.norm(self.encoder(x)))


@dataclass(frozen=True)
class NetParams:
    """Size and training of the model.

    Attributes:
        n_seeds: networks averaged (each with its own initialisation and inner split).
        ipw_clip: largest inverse-propensity weight (as `FitConfig.ipw_clip`).
    """

    d_model: int = 32
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-3
    batch_size: int = 512
    max_epochs: int = 100
    patience: int = 8
    valid_share: float = 0.2
    ipw_clip: float = 50.0
    n_seeds: int = 5


def action_outcome_loss(
    out: Tensor, action: Tensor, propensity: Tensor, y: Tensor, kind: OutcomeKind, ipw_clip: float
) -> Tensor:
    """Inverse-propensity-weighted loss of the logged action's output only, as in `journey_loss`:
    BCE with logits for a binary outcome, squared error for a continuous one (in units of its scale).

    Args:
        out: (B, n_actions) head outputs.
        action: (B,) logged action.
        propensity: (B,) its logging probability.
        y: (B,) observed outcome.
    """
    taken = out.gather(1, action.unsqueeze(1)).squeeze(1)
    weight = (1.0 / propensity).clamp(max=ipw_clip)
    if kind == "binary":
        loss = F.binary_cross_entropy_with_logits(taken, y, reduction="none")
    else:
        loss = (taken - y) ** 2
    return (weight * loss).sum() / weight.sum()


class NetLearner:
    """The model: `ActionOutcomeNet` trained with `action_outcome_loss`, early-stopped on an inner split."""

    def __init__(self, kind: OutcomeKind, params: NetParams | None = None, seed: int = 0) -> None:
        self.kind = kind
        self.params = params or NetParams()
        self.seed = seed

    def fit(self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> NetLearner:
        """Trains `n_seeds` networks with Adam; each keeps the epoch of its lowest inner-validation loss."""
        self.scale_ = float(y.std()) if self.kind == "continuous" and y.std() > 0 else 1.0
        self.nets_: list[ActionOutcomeNet] = []
        self.epochs_: list[int] = []
        self.seconds_: list[float] = []
        for k in range(self.params.n_seeds):
            start = time.perf_counter()
            net, epoch = self._fit_one(x, action, propensity, y / self.scale_, self.seed * 1_000 + k)
            self.seconds_.append(time.perf_counter() - start)
            self.nets_.append(net)
            self.epochs_.append(epoch)
        return self

    def _fit_one(
        self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray, seed: int
    ) -> tuple[ActionOutcomeNet, int]:
        p = self.params
        torch.manual_seed(seed)
        strata = action * 2 + (y > 0)
        fit_rows, valid_rows = train_test_split(
            np.arange(len(x)), test_size=p.valid_share, random_state=seed, stratify=strata
        )
        tensors = [
            torch.from_numpy(np.asarray(v, dtype=dtype))
            for v, dtype in ((x, np.float32), (action, np.int64), (propensity, np.float32), (y, np.float32))
        ]
        xf, af, pf, yf = (t[fit_rows] for t in tensors)
        xv, av, pv, yv = (t[valid_rows] for t in tensors)
        net = ActionOutcomeNet(x.shape[1], p.d_model, len(ARMS), p.dropout)
        optimiser = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best_loss, best_epoch, best_state = float("inf"), 0, net.state_dict()
        for epoch in range(1, p.max_epochs + 1):
            net.train()
            order = torch.randperm(len(xf), generator=generator)
            for start in range(0, len(order), p.batch_size):
                idx = order[start : start + p.batch_size]
                loss = action_outcome_loss(net(xf[idx]), af[idx], pf[idx], yf[idx], self.kind, p.ipw_clip)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            net.eval()
            with torch.inference_mode():
                valid_loss = float(action_outcome_loss(net(xv), av, pv, yv, self.kind, p.ipw_clip))
            if valid_loss < best_loss - 1e-6:
                best_loss, best_epoch = valid_loss, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif epoch - best_epoch >= p.patience:
                break
        net.load_state_dict(best_state)
        net.eval()
        return net, best_epoch

    @torch.inference_mode()
    def predict(self, x: np.ndarray, members: int | None = None) -> np.ndarray:
        """(n, n_actions) predicted outcome of each action (the mean over the first `members` networks,
        all by default)."""
        xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
        outs = []
        for net in self.nets_[:members]:
            out = net(xt)
            outs.append((torch.sigmoid(out) if self.kind == "binary" else out * self.scale_).numpy())
        return np.mean(outs, axis=0).astype(np.float64)

    def variants(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
        """The ablation of an ensemble: its first network alone (predictions, its fit seconds)."""
        if len(self.nets_) < 2:
            return {}
        return {MODEL_SINGLE: (self.predict(x, members=1), self.seconds_[0])}

    def info(self) -> dict[str, Any]:
        """Best epoch of each network."""
        return {"epochs": self.epochs_}


Learner = TLearner | NetLearner
LearnerFactory = Callable[[int], Learner]
