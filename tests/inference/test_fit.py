"""Fit loop: one compile, exact resume from checkpoints, non-finite guard keeps the last state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msde_ppl.atomic import umask
from msde_ppl.inference import (
    AutoAmortizedSDE,
    FitInterrupted,
    FitState,
    NonFiniteLossError,
    SolverFreeELBO,
    TemporalKernel,
    checkpoint_record,
    fit,
    linear_beta_warmup,
    save_checkpoint,
    window_batches,
)


@pytest.fixture(scope="module")
def problem(ou):
    times = jnp.arange(8 * 15 + 1) * 0.05
    _, obs = ou.simulate(jax.random.key(0), times, a=1.0, c=0.8, s=(0.5, 1.0), eps=0.1,
                         obs_std=0.1)
    windows = {"times": ou.make_windows(times, 16), "obs": ou.make_windows(obs, 16)}

    def model(times, obs):
        ou.model(times, obs, n_windows=8)

    guide = AutoAmortizedSDE(model, ou.SnapshotEncoder(key=jax.random.key(1)),
                             kernel=TemporalKernel(hidden_size=8, key=jax.random.key(2)))
    return model, guide, windows


def _run(problem, num_steps, batch_fn=None, **kw):
    model, guide, windows = problem
    batch_fn = batch_fn or window_batches(windows, 2)
    return fit(jax.random.key(3), model, guide, SolverFreeELBO(normalize=True),
               optax.adam(optax.exponential_decay(1e-2, 2000, 0.9)), batch_fn,
               num_steps=num_steps, chunk_size=5, progress=False, **kw)


@pytest.fixture(scope="module")
def full_run(problem):
    traces = []
    result = _run(problem, 20, trace_counter=traces)  # 4 chunks of 5
    return result, traces


@pytest.fixture(scope="module")
def partial_run(problem, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.npz"
    return _run(problem, 7, checkpoint_path=path), path  # a full chunk + a partial one


def test_single_compile_and_loss_decreases(full_run):
    result, traces = full_run
    assert len(traces) == 1  # the chunk function was traced (hence compiled) once
    assert result.losses.shape == (20,) and int(result.state.step) == 20
    assert np.all(np.isfinite(result.losses))
    assert result.losses[-5:].mean() < result.losses[:5].mean()


def test_checkpoint_resume_is_bit_identical(problem, full_run, partial_run):
    full, _ = full_run
    first, path = partial_run
    np.testing.assert_array_equal(first.losses, full.losses[:7])
    traces = []
    resumed = _run(problem, 20, checkpoint_path=path, resume=True, trace_counter=traces)
    assert len(traces) == 1
    np.testing.assert_array_equal(resumed.losses, full.losses)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_python_loop_follows_the_scan_trajectory(problem, full_run):
    """The per-step Python loop (for convolutional models) runs the same steps as the scan:
    same PRNG stream and updates, one compilation, the callback sees every chunk.

    XLA fuses the two programs differently, so the losses agree to rounding at first; Adam's
    normalised updates then amplify the rounding differences step by step (1e-6 relative at
    step 4, about 1e-2 by step 17), so only the first steps are compared tightly."""
    full, _ = full_run
    traces, seen = [], []
    result = _run(problem, 17, trace_counter=traces, loop="python",
                  callback=lambda params, losses: seen.append(len(losses)))
    assert len(traces) == 1 and seen == [5, 10, 15, 17]
    np.testing.assert_allclose(result.losses[:4], full.losses[:4], rtol=1e-5)
    scan17 = _run(problem, 17)
    np.testing.assert_array_equal(jax.random.key_data(result.state.rng_key),
                                  jax.random.key_data(scan17.state.rng_key))
    with pytest.raises(ValueError, match="loop"):
        _run(problem, 5, loop="while")


def test_callback_returning_true_stops_the_fit(problem, full_run):
    full, _ = full_run
    stopped = _run(problem, 20, callback=lambda params, losses: len(losses) >= 10)
    assert int(stopped.state.step) == 10
    np.testing.assert_array_equal(stopped.losses, full.losses[:10])


def test_learning_rate_factor_scales_the_steps_after_it_is_set(problem, full_run, tmp_path):
    """A factor that stays 1 follows the plain fit (to rounding: XLA fuses the program with
    the factor differently, and Adam amplifies the rounding step by step, as in
    test_python_loop_follows_the_scan_trajectory); a factor set to 0 after the second chunk
    (step 10) freezes every parameter from there on while the losses go on, without a
    recompile; the factor is saved with the checkpoint, so a resumed fit still has it."""
    full, _ = full_run
    same = _run(problem, 20, lr_factor=lambda: 1.0)
    np.testing.assert_allclose(same.losses[:4], full.losses[:4], rtol=1e-5)
    seen, traces = [], []
    frozen = _run(problem, 20, callback=lambda params, losses: seen.append(len(losses)),
                  lr_factor=lambda: 0.0 if seen[-1] >= 10 else 1.0,
                  checkpoint_path=tmp_path / "ckpt.npz", trace_counter=traces)
    assert len(traces) == 1  # a new factor is a new value, not a new program
    np.testing.assert_array_equal(frozen.losses[:10], same.losses[:10])
    assert not np.array_equal(frozen.losses[10:], same.losses[10:])
    at_ten = _run(problem, 10, lr_factor=lambda: 1.0)
    for a, b in zip(jax.tree.leaves(frozen.state.params), jax.tree.leaves(at_ten.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stored = np.load(tmp_path / "ckpt.npz")
    assert any(stored[k].shape == () and float(stored[k]) == 0.0 for k in stored.files
               if stored[k].dtype == np.float32)


def test_nan_in_data_stops_with_last_good_state(problem, partial_run):
    _, _, windows = problem
    clean = window_batches(windows, 2)
    reference, _ = partial_run  # 7 clean steps

    def poisoned(rng_key, step):
        batch = clean(rng_key, step)
        bad = jnp.where(step == 7, jnp.nan, 0.0)
        return {**batch, "obs": batch["obs"] + bad}

    with pytest.raises(NonFiniteLossError, match="step 7") as err:
        _run(problem, 20, batch_fn=poisoned)
    state = err.value.state
    assert int(state.step) == 7
    np.testing.assert_array_equal(err.value.losses, reference.losses)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_in_initial_batch_is_refused(problem):
    _, _, windows = problem
    bad = {**windows, "obs": windows["obs"].at[0, 0, 0].set(jnp.nan)}
    with pytest.raises(NonFiniteLossError, match="NaN"):
        _run(problem, 5, batch_fn=lambda key, step: jax.tree.map(lambda x: x[:2], bad))


@pytest.mark.slow
def test_beta_schedule_changes_the_objective(problem):
    plain = _run(problem, 5)
    warm = _run(problem, 5, beta_schedule=lambda step: linear_beta_warmup(step, 100))
    assert not np.allclose(plain.losses, warm.losses)
    np.testing.assert_allclose(linear_beta_warmup(jnp.arange(4) * 50, 100), [0, 0.5, 1, 1])


def test_stop_request_checkpoints_and_resumes_bit_identically(problem, full_run, tmp_path):
    """``should_stop`` ends the fit after the current chunk with a checkpoint of that state;
    resuming from it follows the uninterrupted trajectory exactly."""
    full, _ = full_run
    path = tmp_path / "ckpt.npz"
    polls = []

    def stop_after_two_chunks() -> bool:
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(FitInterrupted, match="after step 10") as err:
        _run(problem, 20, checkpoint_path=path, checkpoint_every=1e9,
             should_stop=stop_after_two_chunks)
    assert int(err.value.state.step) == 10 and checkpoint_record(path)["step"] == 10
    np.testing.assert_array_equal(err.value.losses, full.losses[:10])
    resumed = _run(problem, 20, checkpoint_path=path, resume=True)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoints_of_another_fit_or_damaged_are_refused(problem, partial_run, tmp_path):
    _, path = partial_run
    with pytest.raises(ValueError, match="another fit"):  # written with another description
        _run(problem, 20, checkpoint_path=path, resume=True,
             checkpoint_extra={"data": "other"})
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="damaged or truncated"):
        _run(problem, 20, checkpoint_path=damaged, resume=True)
    # another model: the arrays do not fit this fit's state
    other = FitState({"w": jnp.zeros(3)}, (), jax.random.key(0), jnp.zeros((), jnp.int32))
    save_checkpoint(tmp_path / "other.npz", other, np.zeros(2))
    with pytest.raises(ValueError, match="another model"):
        _run(problem, 20, checkpoint_path=tmp_path / "other.npz", resume=True)
    assert checkpoint_record(tmp_path / "other.npz")["step"] == 0
    assert oct((tmp_path / "other.npz").stat().st_mode & 0o777) == oct(0o666 & ~umask())



def test_tail_average_is_the_mean_of_the_late_iterates_and_leaves_the_path_alone():
    from msde_ppl.inference.fit import FitState, averaged_params, tail_average

    opt = optax.sgd(0.1)
    avg = tail_average(opt, ["a"], start=3)
    params = {"a": jnp.asarray(1.0), "b": jnp.asarray(2.0)}
    plain_state, avg_state = opt.init(params), avg.init(params)
    plain, iterates = dict(params), []
    for k in range(6):
        grads = {"a": jnp.asarray(float(k)), "b": jnp.asarray(-1.0)}
        up_plain, plain_state = opt.update(grads, plain_state, plain)
        up_avg, avg_state = avg.update(grads, avg_state, params)
        plain, params = optax.apply_updates(plain, up_plain), optax.apply_updates(params, up_avg)
        iterates.append(float(params["a"]))
        np.testing.assert_array_equal(params["a"], plain["a"])  # same updates
    state = FitState(params, avg_state, jax.random.key(0), jnp.asarray(6, jnp.int32))
    out = averaged_params(state)
    np.testing.assert_allclose(out["a"], np.mean(iterates[3:]), rtol=1e-6)
    assert out["b"] == params["b"]  # not averaged


def test_parameter_ema_is_the_debiased_moving_average_and_leaves_the_path_alone():
    """m_n = d m_{n-1} + (1 - d) theta_n from m_0 = 0, debiased by 1 - d^n, for every
    parameter; the updates are the wrapped optimiser's; nested in a tail average, the tail
    average wins for its parameters and the EMA holds for the rest."""
    from msde_ppl.inference.fit import FitState, averaged_params, parameter_ema, tail_average

    d, opt = 0.8, optax.sgd(0.1)
    ema = tail_average(parameter_ema(opt, d), ["b"], start=2)
    params = {"a": jnp.asarray(1.0), "b": jnp.asarray(2.0)}
    plain_state, ema_state = opt.init(params), ema.init(params)
    plain, iterates = dict(params), []
    for k in range(7):
        grads = {"a": jnp.asarray(float(k) - 2.0), "b": jnp.asarray(-1.0)}
        up_plain, plain_state = opt.update(grads, plain_state, plain)
        up_ema, ema_state = ema.update(grads, ema_state, params)
        plain, params = optax.apply_updates(plain, up_plain), optax.apply_updates(params, up_ema)
        iterates.append({k_: float(v) for k_, v in params.items()})
        np.testing.assert_array_equal(params["a"], plain["a"])  # same updates
    n = len(iterates)
    weights = (1 - d) * d ** np.arange(n - 1, -1, -1)
    expected_a = sum(w * it["a"] for w, it in zip(weights, iterates, strict=True)) / (1 - d**n)
    out = averaged_params(FitState(params, ema_state, jax.random.key(0),
                                   jnp.asarray(n, jnp.int32)))
    np.testing.assert_allclose(out["a"], expected_a, rtol=1e-6)
    np.testing.assert_allclose(out["b"], np.mean([it["b"] for it in iterates[2:]]), rtol=1e-6)
    with pytest.raises(ValueError, match="EMA decay"):
        parameter_ema(opt, 1.0)


def test_the_data_a_minibatch_function_closes_over_are_arguments_not_constants():
    """The chunk program takes the arrays ``batch_fn`` closes over as arguments (compiled into
    it, 1 MB of data is ~2 MB of program text and is copied by every compiler pass)."""
    from msde_ppl.inference.fit import _hoisted

    data = {"obs": jnp.arange(64 * 4096, dtype=jnp.float32).reshape(64, 4096)}
    batch_fn = window_batches(data, 4)
    batch_from, consts = _hoisted(batch_fn, jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
    assert any(c.shape == (64, 4096) for c in consts)
    key, step = jax.random.key(3), jnp.asarray(5, jnp.int32)
    np.testing.assert_array_equal(batch_from(consts, key, step)["obs"],
                                  batch_fn(key, step)["obs"])
    embedded = jax.jit(batch_fn).lower(key, step).as_text()
    hoisted = jax.jit(batch_from).lower(consts, key, step).as_text()
    assert len(embedded) > 1_000_000 > 10 * len(hoisted)
