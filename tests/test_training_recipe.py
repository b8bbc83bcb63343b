"""The training recipe: cosine-decayed Adam, fresh shuffles, one ordinary Adam step per mini-batch."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import train  # noqa: E402
from conftest import synthetic_mnist  # noqa: E402


def test_cosine_schedule_falls_from_0_002_to_0_over_the_run():
    rate = train.make_optimizer("cosine", total_steps=1000).learning_rate  # evaluated at step 0
    schedule = train.make_optimizer("cosine", total_steps=1000)._learning_rate
    assert float(rate) == pytest.approx(0.002)
    assert float(schedule(500)) == pytest.approx(0.001, rel=1e-5)  # the mean: the plain rate
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)


def test_constant_schedule_is_the_plain_recipe():
    assert float(train.make_optimizer("constant", total_steps=1000).learning_rate) == pytest.approx(0.001)


def epoch_orders(count: int, batch_size: int, seed: int, epochs: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [train.epoch_order(rng, count, batch_size) for _ in range(epochs)]


def test_each_epoch_sees_every_full_batch_once_in_a_new_order():
    first, second = epoch_orders(1000, batch_size=32, seed=3, epochs=2)
    assert first.shape == second.shape == (1000 // 32, 32)  # the partial batch is left out
    assert len(set(first.ravel())) == first.size and len(set(second.ravel())) == second.size
    assert first.max() < 1000 and second.max() < 1000
    assert not np.array_equal(first, second)


def test_the_order_follows_the_seed():
    assert np.array_equal(epoch_orders(500, 10, seed=1, epochs=1)[0],
                          epoch_orders(500, 10, seed=1, epochs=1)[0])
    assert not np.array_equal(epoch_orders(500, 10, seed=1, epochs=1)[0],
                              epoch_orders(500, 10, seed=2, epochs=1)[0])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_compiled_epoch_makes_the_same_updates_as_plain_mini_batch_adam(schedule):
    data = synthetic_mnist(n_train=640, n_test=10)
    images, labels = data["x_train"], data["y_train"]
    order = epoch_orders(len(images), batch_size=32, seed=0, epochs=1)[0]

    keras.utils.set_random_seed(0)
    fast = train.build_model()
    plain = keras.models.clone_model(fast)
    plain.set_weights(fast.get_weights())
    train.compile_model(fast, train.make_optimizer(schedule, total_steps=len(order)))
    loss, accuracy = train.make_epoch_trainer(fast, images, labels)(order)

    train.compile_model(plain, train.make_optimizer(schedule, total_steps=len(order)))
    plain_losses, plain_correct = [], 0
    for batch in order:
        x, y = train.normalize(images[batch]), labels[batch]
        plain_correct += int(np.sum(plain.predict_on_batch(x).argmax(axis=1) == y))
        plain_losses.append(plain.train_on_batch(x, y, return_dict=True)["loss"])

    assert int(fast.optimizer.iterations) == int(plain.optimizer.iterations) == 640 // 32
    for fast_weights, plain_weights in zip(fast.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(fast_weights, plain_weights, rtol=1e-4, atol=1e-6)
    assert float(accuracy) == pytest.approx(plain_correct / order.size)
    assert float(loss) == pytest.approx(np.mean(plain_losses), rel=1e-4)


def test_the_scorer_agrees_with_keras_evaluate():
    data = synthetic_mnist(n_train=10, n_test=300)
    keras.utils.set_random_seed(0)
    model = train.build_model()
    train.compile_model(model, keras.optimizers.Adam(0.001))
    images = train.normalize(data["x_test"])
    loss, accuracy = train.make_scorer(model)(images, data["y_test"])
    expected = model.evaluate(images, data["y_test"], verbose=0, return_dict=True)
    assert float(loss) == pytest.approx(expected["loss"], rel=1e-4)
    assert float(accuracy) == pytest.approx(expected["accuracy"])


def test_training_reports_loss_and_accuracy_per_epoch(tmp_path):
    data = synthetic_mnist(n_train=400, n_test=50)
    split = train.split_validation(train.Mnist(**data, source="synthetic"), 0.2)
    args = argparse.Namespace(epochs=2, batch_size=32, lr_schedule="cosine", seed=0, quiet=True,
                              tensorboard=False)
    keras.utils.set_random_seed(0)
    model = train.build_model()
    history = train.train(model, split, args, logs=tmp_path)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert history["learning_rate"][0] == pytest.approx(0.002) and history["learning_rate"][1] < 0.002
    assert all(len(values) == 2 for values in history.values())
    assert int(model.optimizer.iterations) == 2 * (320 // 32)
    assert len((tmp_path / train.HISTORY_FILE).read_text().splitlines()) == 1 + 2  # header, 2 epochs
