"""Adam training under the anchor-regularized loss with plateau early stopping, one λ at a time
or many at once under ``vmap``.

Every λ of a sweep shares one seeded initialisation (or starts from the anchor) and one seeded
mini-batch order per epoch, so λ values differ only by λ. An epoch is ``⌈N / B⌉`` Adam steps on
``mean CE(batch) + λ‖θ − θ_ref‖²`` over a fresh permutation, the last partial batch included (as
torch's ``DataLoader(shuffle=True, drop_last=False)``). After each epoch ``L_eff`` over all training
samples decides early stopping: a member stops once ``L_eff`` has not improved on its reference
value by more than ``min_delta`` for ``patience`` epochs ("converged"), at ``max_epochs`` (not
converged), or when ``L_eff`` becomes NaN/Inf ("diverged"). Its result is the weights of its best
(lowest ``L_eff``) epoch, epoch 0 being the starting point. A member that has stopped is frozen
while the others of its batch continue.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

from .hvp import Chunks, dataset_loss
from .loss import effective_loss
from .models import DEFAULT_PRECISION, DEFAULT_SIZES, Model, Params, apply_mlp, init_mlp

_INIT_STREAM, _ORDER_STREAM = 0, 1


def initial_params(seed: int, model: Model | Sequence[int] = DEFAULT_SIZES, dtype=jnp.float32) -> Params:
    """The seeded fresh initialisation that every λ of a run starts from (``--init random``):
    ``model.init`` of a :class:`hessjax.models.Model`, or the MLP of widths ``model``."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _INIT_STREAM)
    if isinstance(model, Model):
        return model.init(key, dtype)
    return init_mlp(key, model, dtype)


def epoch_key(seed, epoch) -> jax.Array:
    """The key of epoch ``epoch``'s mini-batch permutation; traceable in ``epoch``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _ORDER_STREAM), epoch)


def epoch_order(seed, epoch, n: int) -> jax.Array:
    """The sample order ``[n]`` of epoch ``epoch`` (1-based, as counted by :class:`TrainState`),
    shared by every λ and by the torch reference."""
    return jax.random.permutation(epoch_key(seed, epoch), n)


class TrainConfig(NamedTuple):
    """Static training settings (hashable: one compilation per configuration)."""

    lr: float = 0.0015
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5
    min_delta: float = 1e-4


class TrainState(NamedTuple):
    """One member's training state; under ``vmap`` every field gains a leading λ axis."""

    params: Params  # current weights
    opt_state: optax.OptState  # Adam's moments and step count
    best_params: Params  # weights of the lowest L_eff seen so far
    best_loss: jax.Array  # [] lowest L_eff over the training samples so far
    ref_loss: jax.Array  # [] L_eff at the last improvement by more than min_delta
    best_epoch: jax.Array  # [] int32, epoch of best_params (0 = the starting point)
    stale: jax.Array  # [] int32, epochs since the last improvement by more than min_delta
    epoch: jax.Array  # [] int32, epochs trained
    loss: jax.Array  # [] L_eff after the latest epoch
    stopped: jax.Array  # [] bool
    converged: jax.Array  # [] bool, stopped by the plateau rule
    diverged: jax.Array  # [] bool, L_eff became NaN or Inf


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    # optax.adam's defaults (b1=0.9, b2=0.999, eps=1e-8 outside the square root) are torch.optim.Adam's.
    return optax.adam(config.lr)


def init_state(params: Params, anchor: Params, lam, train: Chunks, config: TrainConfig, *,
               precision=DEFAULT_PRECISION, apply=apply_mlp) -> TrainState:
    """Epoch 0: the starting point, its ``L_eff`` over the training samples, fresh Adam moments."""
    loss = dataset_loss(params, anchor, lam, train, precision=precision, apply=apply)
    bad = ~jnp.isfinite(loss)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, _optimizer(config).init(params), params, loss, loss, zero, zero, zero, loss,
                      bad | (config.max_epochs <= 0), jnp.zeros((), bool), bad)


def _epoch_of_steps(params, opt_state, anchor, lam, x, y, order, config: TrainConfig, precision, apply):
    """Adam over one epoch's mini-batches in ``order``: a scan over the full batches, then the
    partial last batch (a static shape of its own)."""
    opt = _optimizer(config)
    n, bs = order.shape[0], min(config.batch_size, order.shape[0])
    n_full = n // bs

    def step(carry, idx):
        p, s = carry
        g = jax.grad(effective_loss)(p, anchor, lam, x[idx], y[idx], precision=precision, apply=apply)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, opt_state), _ = lax.scan(step, (params, opt_state), order[: n_full * bs].reshape(n_full, bs))
    if n % bs:
        (params, opt_state), _ = step((params, opt_state), order[n_full * bs:])
    return params, opt_state


def train_epoch(state: TrainState, anchor: Params, lam, x: jax.Array, y: jax.Array, train: Chunks,
                order: jax.Array, config: TrainConfig, *, precision=DEFAULT_PRECISION, apply=apply_mlp) -> TrainState:
    """One epoch for one member, a no-op once it has stopped (so it vmaps over λ with freezing).

    ``x`` ``[N, *input_shape]`` / ``y`` ``[N]`` are the training samples that ``order`` ``[N]`` permutes;
    ``train`` is the same data chunked for the full-data ``L_eff`` that decides early stopping.
    """
    params, opt_state = _epoch_of_steps(state.params, state.opt_state, anchor, lam, x, y, order, config, precision,
                                        apply)
    loss = dataset_loss(params, anchor, lam, train, precision=precision, apply=apply)
    epoch = state.epoch + 1
    finite = jnp.isfinite(loss)
    better = finite & (loss < state.best_loss)
    significant = finite & (loss < state.ref_loss - config.min_delta)
    stale = jnp.where(significant, 0, state.stale + 1)
    plateau = stale >= config.patience
    new = TrainState(
        params=params,
        opt_state=opt_state,
        best_params=jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), params, state.best_params),
        best_loss=jnp.where(better, loss, state.best_loss),
        ref_loss=jnp.where(significant, loss, state.ref_loss),
        best_epoch=jnp.where(better, epoch, state.best_epoch),
        stale=stale,
        epoch=epoch,
        loss=loss,
        stopped=~finite | plateau | (epoch >= config.max_epochs),
        converged=finite & plateau,
        diverged=~finite,
    )
    return jax.tree_util.tree_map(lambda old, upd: jnp.where(state.stopped, old, upd), state, new)


def train(params: Params, anchor: Params, lam, x: jax.Array, y: jax.Array, train_chunks: Chunks, seed,
          config: TrainConfig, *, precision=DEFAULT_PRECISION, apply=apply_mlp) -> TrainState:
    """Train one member to its stopping epoch inside one compiled ``lax.while_loop``.

    The sweep drives :func:`train_epoch` epoch by epoch instead, to report progress; both apply the
    same epochs and the same stopping rule (tested against each other to 1e-12 in float64).
    """
    state = init_state(params, anchor, lam, train_chunks, config, precision=precision, apply=apply)

    def body(s):
        order = epoch_order(seed, s.epoch + 1, x.shape[0])
        return train_epoch(s, anchor, lam, x, y, train_chunks, order, config, precision=precision, apply=apply)

    return lax.while_loop(lambda s: ~s.stopped, body, state)
