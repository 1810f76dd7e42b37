"""The same dropout masks in Keras (any backend) and PyTorch, for the same seed.

Run with any Keras backend, e.g. ``KERAS_BACKEND=jax python examples/keras_torch_same_masks.py``.
A two-layer MLP is built in Keras with ``dropkit.keras.Dropout(seed=7)`` and in
PyTorch with the same weights; the k-th training call in Keras drops exactly
the units that ``dropkit.functional.dropout(..., seed=7, offset=k)`` drops in torch.
"""

import keras
import numpy as np
import torch

import dropkit
import dropkit.keras as dk

x = np.random.RandomState(0).randn(4, 20).astype("float32")

keras_model = keras.Sequential([
    keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
    dk.Dropout(0.5, seed=7), keras.layers.Dense(3),
])
dense1, _, dense2 = keras_model.layers

torch_first = torch.nn.Linear(20, 32)
torch_last = torch.nn.Linear(32, 3)
with torch.no_grad():  # copy Keras' weights (Keras stores kernels as (in, out))
    for layer, dense in ((torch_first, dense1), (torch_last, dense2)):
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights)
        layer.weight.copy_(torch.from_numpy(kernel.T))
        layer.bias.copy_(torch.from_numpy(bias))

for call in range(3):
    hidden_keras = keras.ops.convert_to_numpy(
        keras_model.layers[1](dense1(x), training=True)
    )
    hidden_torch = dropkit.functional.dropout(
        torch.relu(torch_first(torch.from_numpy(x))), 0.5, seed=7, offset=call
    )
    same = np.array_equal(hidden_keras == 0, hidden_torch.detach().numpy() == 0)
    close = np.allclose(hidden_keras, hidden_torch.detach().numpy(), atol=1e-5)
    print(f"{keras.backend.backend()} call {call}: same dropped units {same}, "
          f"same values {close} (matmuls round differently across frameworks)")
