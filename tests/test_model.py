"""The network is exactly the one the design card names."""
from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")
import train  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return train.build_model()


def test_layers_are_flatten_dense_relu_dense_softmax(model):
    kinds = [(type(layer).__name__, getattr(layer, "units", None),
              getattr(getattr(layer, "activation", None), "__name__", None)) for layer in model.layers]
    assert kinds == [("Flatten", None, None), ("Dense", 128, "relu"), ("Dense", 10, "softmax")]


def test_shapes_run_from_28x28_images_to_10_probabilities(model):
    assert model.input_shape == (None, 28, 28)
    assert [layer.output.shape for layer in model.layers] == [(None, 784), (None, 128), (None, 10)]


def test_parameter_count(model):
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10 == 101_770


def test_outputs_are_probabilities(model):
    import numpy as np
    probabilities = model.predict(np.random.default_rng(0).random((4, 28, 28), dtype=np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
