"""Training: Adam steps equal optax by hand, early stopping follows its rule, vmap over λ equals a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessjax
from hessjax.hvp import chunk_data
from hessjax.training import TrainConfig, epoch_order, init_state, initial_params, train, train_epoch

SIZES = (12, 8, 4)


@pytest.fixture(scope="module")
def data():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.uniform(k1, (50, SIZES[0]), jnp.float64)
    y = jax.random.randint(k2, (50,), 0, SIZES[-1])
    return x, y, chunk_data(x, y, 16)


def test_epoch_order_is_a_seeded_permutation():
    a = np.asarray(epoch_order(0, 1, 100))
    assert sorted(a) == list(range(100))
    np.testing.assert_array_equal(a, epoch_order(0, 1, 100))
    assert not np.array_equal(a, epoch_order(0, 2, 100))
    assert not np.array_equal(a, epoch_order(1, 1, 100))


def test_one_epoch_is_adam_over_the_permuted_batches_including_the_last_partial_one(data):
    x, y, chunks = data
    params = initial_params(0, SIZES, jnp.float64)
    anchor = hessjax.init_mlp(jax.random.PRNGKey(9), SIZES, jnp.float64)
    cfg = TrainConfig(lr=0.01, batch_size=16, max_epochs=3, patience=2, min_delta=0.0)
    lam = 0.05
    state = init_state(params, anchor, lam, chunks, cfg)
    order = epoch_order(7, 1, 50)
    new = train_epoch(state, anchor, lam, x, y, chunks, order, cfg)
    # by hand: batches of 16, 16, 16, 2
    opt = optax.adam(0.01)
    p, s = params, opt.init(params)
    for start in range(0, 50, 16):
        idx = order[start: start + 16]
        g = jax.grad(hessjax.effective_loss)(p, anchor, lam, x[idx], y[idx])
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
    for (w, b), (w2, b2) in zip(new.params, p):
        np.testing.assert_allclose(w, w2, rtol=1e-12)
        np.testing.assert_allclose(b, b2, rtol=1e-12)
    np.testing.assert_allclose(new.loss, hessjax.effective_loss(p, anchor, lam, x, y), rtol=1e-12)
    assert int(new.epoch) == 1


def test_early_stopping_rule_and_best_weights(data):
    x, y, chunks = data
    params = initial_params(1, SIZES, jnp.float64)
    cfg = TrainConfig(lr=0.05, batch_size=8, max_epochs=60, patience=3, min_delta=2e-2)
    final = jax.jit(train, static_argnames="config")(params, params, 0.0, x, y, chunks, 0, config=cfg)
    # replay epoch by epoch on the host and apply the rule independently
    state = init_state(params, params, 0.0, chunks, cfg)
    losses = [float(state.loss)]
    ref, stale, best, best_epoch = losses[0], 0, losses[0], 0
    for epoch in range(1, cfg.max_epochs + 1):
        state = train_epoch(state, params, 0.0, x, y, chunks, epoch_order(0, epoch, 50), cfg)
        loss = float(state.loss)
        if loss < best:
            best, best_epoch = loss, epoch
        if loss < ref - cfg.min_delta:
            ref, stale = loss, 0
        else:
            stale += 1
        if stale >= cfg.patience:
            break
    assert int(final.epoch) == epoch and bool(final.converged) == (stale >= cfg.patience)
    assert int(final.best_epoch) == best_epoch
    np.testing.assert_allclose(final.best_loss, best, rtol=1e-12)
    np.testing.assert_allclose(hessjax.dataset_loss(final.best_params, params, 0.0, chunks), best, rtol=1e-12)
    assert 0 < int(final.epoch) < cfg.max_epochs and not bool(final.diverged)


def test_max_epochs_zero_means_no_training(data):
    x, y, chunks = data
    params = initial_params(0, SIZES, jnp.float64)
    final = train(params, params, 0.1, x, y, chunks, 0, TrainConfig(max_epochs=0))
    assert int(final.epoch) == 0 and bool(final.stopped) and not bool(final.converged)
    for a, b in zip(jax.tree.leaves((final.params, final.best_params)), jax.tree.leaves((params, params))):
        np.testing.assert_array_equal(a, b)


def test_divergence_is_detected_and_frozen(data):
    """λ = 1e305 with θ_ref = θ₀: L_eff is finite at epoch 0 and Inf after the first Adam steps."""
    x, y, chunks = data
    params = initial_params(0, SIZES, jnp.float64)
    cfg = TrainConfig(lr=1e3, max_epochs=20)
    final = train(params, params, 1e305, x, y, chunks, 0, cfg)
    assert bool(final.diverged) and bool(final.stopped) and not bool(final.converged)
    # stopped at the epoch that diverged, keeping the last finite weights: the starting point
    start_loss = float(hessjax.dataset_loss(params, params, 1e305, chunks))
    assert np.isfinite(start_loss) and not np.isfinite(float(final.loss))
    assert int(final.epoch) == 1 and int(final.best_epoch) == 0 and float(final.best_loss) == start_loss
    for a, b in zip(jax.tree.leaves(final.best_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    # frozen: a further epoch leaves every field as it was
    again = train_epoch(final, params, 1e305, x, y, chunks, epoch_order(0, 2, 50), cfg)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(final)):
        np.testing.assert_array_equal(a, b)


def test_vmap_over_lambda_equals_a_loop_and_freezes_stopped_members(data):
    x, y, chunks = data
    params = initial_params(2, SIZES, jnp.float64)
    anchor = hessjax.init_mlp(jax.random.PRNGKey(5), SIZES, jnp.float64)
    cfg = TrainConfig(lr=0.02, batch_size=16, max_epochs=25, patience=2, min_delta=1e-3)
    lams = jnp.array([0.0, 0.01, 1.0])
    batched = jax.jit(jax.vmap(train, in_axes=(None, None, 0, None, None, None, None, None)),
                      static_argnums=7)(params, anchor, lams, x, y, chunks, 0, cfg)
    epochs = set()
    for i, lam in enumerate(lams):
        single = train(params, anchor, lam, x, y, chunks, 0, cfg)
        assert int(batched.epoch[i]) == int(single.epoch)
        epochs.add(int(single.epoch))
        for (w, b), (w2, b2) in zip(single.best_params, batched.best_params):
            np.testing.assert_allclose(w2[i], w, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(b2[i], b, rtol=1e-10, atol=1e-13)
    assert len(epochs) > 1, "members should stop at different epochs for this test to mean something"
