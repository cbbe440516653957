"""The learner's optimisation step on a batch from the replay buffer, as alphatriangle
1.0.0's ``Trainer`` made it: a distributional (C51) value loss, policy cross-entropy, an
entropy bonus, the optimiser and learning-rate schedule ``TrainConfig`` names.

Guarantee: a 1.0.0 checkpoint's optimizer state loads into the optimizer the config names
(:meth:`Learner.load_optimizer_state` refuses one of another kind or architecture, naming
``OPTIMIZER_TYPE`` or the parameter that differs). Cost per step: one forward and backward
pass and one optimizer step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR

from alphatriangle.config import TrainConfig
from alphatriangle.nn import NeuralNetwork
from alphatriangle.training.resume import optimizer_type_of
from alphatriangle.utils.types import PERBatchSample

__all__ = ["Learner", "project_onto_atoms"]

_SGD_MOMENTUM = 0.9  # 1.0.0's


def project_onto_atoms(
    returns: torch.Tensor, v_min: float, v_max: float, num_atoms: int
) -> torch.Tensor:
    """(N,) scalar returns -> (N, num_atoms) distributions on ``num_atoms`` atoms evenly
    spaced on ``[v_min, v_max]``: each return, clamped to the range, split between its two
    nearest atoms in proportion to its distance from each (C51's projection, as 1.0.0's
    Trainer made it). Each row sums to 1; a return that falls exactly on an atom puts all its
    mass there (1.0.0 lost that mass: its row summed to 0)."""
    delta = (v_max - v_min) / (num_atoms - 1)
    b = ((returns.float().clamp(v_min, v_max) - v_min) / delta).clamp(0, num_atoms - 1)
    lower, upper = b.floor().long(), b.ceil().long()
    lower_mass = upper.float() - b
    upper_mass = b - lower.float()
    lower_mass = torch.where(lower == upper, torch.ones_like(lower_mass), lower_mass)
    target = torch.zeros(returns.shape[0], num_atoms, device=returns.device)
    target.scatter_add_(1, lower.unsqueeze(1), lower_mass.unsqueeze(1))
    target.scatter_add_(1, upper.unsqueeze(1), upper_mass.unsqueeze(1))
    return target


class Learner:
    """Trains ``network`` on prioritised samples; ``train_step`` returns the losses and the
    TD errors (n-step return minus expected value) that become the sampled experiences' new
    priorities.

    Loss per example, weighted by its importance weight and averaged:
    ``POLICY_LOSS_WEIGHT * -sum(target * log_softmax(policy))`` and ``VALUE_LOSS_WEIGHT *
    -sum(projected target * log_softmax(value logits))``; minus ``ENTROPY_BONUS_WEIGHT``
    times the batch's mean policy entropy. Gradients clipped to norm
    ``GRADIENT_CLIP_VALUE``; then the optimizer steps, then the scheduler (when there is
    one)."""

    def __init__(self, network: NeuralNetwork, config: TrainConfig) -> None:
        if network.model_config.USE_BATCH_NORM and config.BATCH_SIZE < 2:
            raise ValueError(
                f"TrainConfig.BATCH_SIZE is {config.BATCH_SIZE} and ModelConfig.USE_BATCH_NORM "
                "is on: batch norm trains on batches of at least 2"
            )
        self.network, self.config = network, config
        self.optimizer = self._make_optimizer()
        self.scheduler: LRScheduler | None = self._make_scheduler()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        config, params = self.config, self.network.model.parameters()
        lr, decay = config.LEARNING_RATE, config.WEIGHT_DECAY
        if config.OPTIMIZER_TYPE == "Adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=decay)
        if config.OPTIMIZER_TYPE == "AdamW":
            return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        return torch.optim.SGD(params, lr=lr, weight_decay=decay, momentum=_SGD_MOMENTUM)

    def _make_scheduler(self) -> LRScheduler | None:
        config = self.config
        if config.LR_SCHEDULER_TYPE == "CosineAnnealingLR":
            return CosineAnnealingLR(
                self.optimizer, T_max=config.lr_scheduler_t_max, eta_min=config.LR_SCHEDULER_ETA_MIN
            )
        if config.LR_SCHEDULER_TYPE == "StepLR":
            return StepLR(
                self.optimizer,
                step_size=config.LR_SCHEDULER_STEP_SIZE,
                gamma=config.LR_SCHEDULER_GAMMA,
            )
        return None

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        """Load an optimizer state dict (1.0.0's or ours) into this optimizer; ValueError
        when it is another kind of optimizer (naming ``OPTIMIZER_TYPE``) or belongs to
        another architecture (naming the parameter), before torch loads it."""
        kind = self.config.OPTIMIZER_TYPE
        groups = state.get("param_groups")
        if not isinstance(groups, list) or not groups or "state" not in state:
            raise ValueError("not an optimizer state dict: no 'param_groups' or no 'state'")
        saved_kind = optimizer_type_of(state) or kind  # None: Adam or AdamW, torch < 2.6
        if saved_kind != kind:
            raise ValueError(
                f"the optimizer state is {saved_kind}'s, and TrainConfig.OPTIMIZER_TYPE is "
                f"{kind}: set OPTIMIZER_TYPE to the optimizer the checkpoint was trained with"
            )
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        saved_ids = [i for g in groups for i in g["params"]]
        if len(saved_ids) != len(params):
            raise ValueError(
                f"the optimizer state holds {len(saved_ids)} parameters, this network "
                f"{len(params)}: it belongs to another architecture (ModelConfig)"
            )
        names = {id(p): n for n, p in self.network.model.named_parameters()}
        for position, saved_id in enumerate(saved_ids):
            for key, value in state["state"].get(saved_id, {}).items():
                if key != "step" and tuple(value.shape) != tuple(params[position].shape):
                    raise ValueError(
                        f"the optimizer state's {key} of parameter {saved_id} has shape "
                        f"{tuple(value.shape)}, this network's "
                        f"{names.get(id(params[position]))} {tuple(params[position].shape)}: "
                        "it belongs to another architecture (ModelConfig)"
                    )
        self.optimizer.load_state_dict(dict(state))

    def train_step(
        self, sample: PERBatchSample
    ) -> tuple[dict[str, float], np.ndarray[Any, np.dtype[np.float64]]]:
        """One optimisation step; (losses, TD errors). The losses: ``loss`` (the total),
        ``policy_loss``, ``value_loss``, ``entropy``, ``mean_td_error``, ``lr`` (the
        learning rate the step used)."""
        network, config = self.network, self.config
        device = network.device
        batch = sample["batch"]
        grid = torch.as_tensor(batch["grid"], dtype=torch.float32, device=device)
        other = torch.as_tensor(batch["other_features"], dtype=torch.float32, device=device)
        policy_target = torch.as_tensor(batch["policy_target"], dtype=torch.float32, device=device)
        returns = torch.as_tensor(batch["value_target"], dtype=torch.float32, device=device)
        weights = torch.as_tensor(sample["weights"], dtype=torch.float32, device=device)
        model = network.model
        model.train()
        policy_logits, value_logits = model(grid, other)

        target = project_onto_atoms(returns, network.v_min, network.v_max, network.num_atoms)
        value_loss = (-(target * torch.log_softmax(value_logits, dim=1)).sum(1) * weights).mean()
        log_probs = torch.log_softmax(policy_logits, dim=1)
        policy_target = torch.nan_to_num(policy_target, nan=0.0)
        policy_loss = (-(policy_target * log_probs).sum(1) * weights).mean()
        entropy = -(log_probs.exp() * log_probs).sum(1).mean()
        loss = (
            config.POLICY_LOSS_WEIGHT * policy_loss
            + config.VALUE_LOSS_WEIGHT * value_loss
            - config.ENTROPY_BONUS_WEIGHT * entropy
        )

        lr = self.learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if config.GRADIENT_CLIP_VALUE is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.GRADIENT_CLIP_VALUE)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

        with torch.no_grad():
            errors = (returns - network.expected_value(value_logits)).cpu().numpy()
        losses = {
            "loss": float(loss.detach()),
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "entropy": float(entropy.detach()),
            "mean_td_error": float(np.abs(errors).mean()) if errors.size else 0.0,
            "lr": lr,
        }
        return losses, errors.astype(np.float64)
