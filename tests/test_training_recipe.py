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


def epoch_orders(labels: np.ndarray, batch_size: int, seed: int, epochs: int) -> list[np.ndarray]:
    images = np.zeros((len(labels), 28, 28), np.uint8)
    blocks = train.shuffled_blocks(images, labels, batch_size, seed)
    return [np.concatenate([y.numpy().ravel() for _, y in blocks]) for _ in range(epochs)]


def test_each_epoch_sees_every_full_batch_once_in_a_new_order():
    labels = np.arange(1000, dtype=np.int64)
    first, second = epoch_orders(labels, batch_size=32, seed=3, epochs=2)
    assert len(first) == len(second) == 1000 // 32 * 32  # the partial batch is left out
    assert len(set(first)) == len(first) and len(set(second)) == len(second)
    assert not np.array_equal(first, second)


def test_the_order_follows_the_seed():
    labels = np.arange(500, dtype=np.int64)
    assert np.array_equal(epoch_orders(labels, 10, seed=1, epochs=1)[0],
                          epoch_orders(labels, 10, seed=1, epochs=1)[0])
    assert not np.array_equal(epoch_orders(labels, 10, seed=1, epochs=1)[0],
                              epoch_orders(labels, 10, seed=2, epochs=1)[0])


def test_the_fast_trainer_makes_the_same_updates_as_plain_mini_batch_adam():
    data = synthetic_mnist(n_train=640, n_test=10)
    blocks = list(train.shuffled_blocks(data["x_train"], data["y_train"], batch_size=32, seed=0))

    keras.utils.set_random_seed(0)
    fast = train.build_model()
    plain = keras.models.clone_model(fast)
    plain.set_weights(fast.get_weights())
    train.compile_model(fast, keras.optimizers.Adam(0.001))
    trainer = train.make_trainer(fast)
    train.compile_model(trainer, fast.optimizer, jit_compile=False)
    trainer.fit((block for block in blocks), steps_per_epoch=len(blocks), epochs=1,
                shuffle=False, verbose=0)

    train.compile_model(plain, keras.optimizers.Adam(0.001))
    for images, labels in blocks:
        for step in range(images.shape[0]):
            plain.train_on_batch(images[step], labels[step])

    assert int(fast.optimizer.iterations) == int(plain.optimizer.iterations) == 640 // 32
    for fast_weights, plain_weights in zip(fast.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(fast_weights, plain_weights, rtol=1e-4, atol=1e-6)


def test_training_reports_loss_and_accuracy_per_epoch(tmp_path):
    data = synthetic_mnist(n_train=400, n_test=50)
    split = train.split_validation(train.Mnist(**data, source="synthetic"), 0.2)
    args = argparse.Namespace(epochs=2, batch_size=32, lr_schedule="cosine", seed=0, quiet=True,
                              tensorboard=False)
    keras.utils.set_random_seed(0)
    model = train.build_model()
    history = train.train(model, split, args, logs=tmp_path)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 2 for values in history.values())
    assert int(model.optimizer.iterations) == 2 * (320 // 32)
    assert len((tmp_path / train.HISTORY_FILE).read_text().splitlines()) == 1 + 2  # header, 2 epochs
