"""Initialisers, in place on a parameter's array (PyTorch's ``nn.init`` names).

Each takes a ``generator``: None (a fresh, unseeded NumPy generator), an int
seed, or a ``numpy.random.Generator``; pass a seed or a generator for a
reproducible model. ``fan_in`` and ``fan_out`` follow PyTorch: for a weight of
shape ``(out, in, *k)`` they are ``in * prod(k)`` and ``out * prod(k)``, so
``Linear(in, out).weight`` (shape (out, in)) has fan_in = in.

Xavier/Glorot (Glorot and Bengio, 2010) keeps the variance of activations and
gradients equal across a layer: ``Var = gain**2 * 2 / (fan_in + fan_out)``; the
lecture's ``U(-sqrt(6/(fan_in+fan_out)), +...)`` is ``xavier_uniform_``.
He/Kaiming (He et al., 2015) scales for ReLU-like layers:
``Var = gain**2 / fan``, ``gain = sqrt(2 / (1 + a**2))``.
"""

import math

import numpy as np

from cygrad.graph import Tensor
from cygrad.graph.engine import writing

__all__ = ["calculate_gain", "uniform_", "normal_", "zeros_", "ones_", "constant_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
           "as_generator"]


def as_generator(generator, fn="init"):
    """A ``numpy.random.Generator`` from None (cygrad.manual_seed's generator when it
    was called, else a fresh unseeded one), an int seed or a Generator."""
    if generator is None:
        from cygrad._random import default_generator
        return default_generator() or np.random.default_rng()
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        if generator < 0:
            raise ValueError(f"{fn}: generator seed must be >= 0, got {generator}")
        return np.random.default_rng(int(generator))
    raise TypeError(f"{fn}: generator must be None, an int seed or a numpy.random.Generator, "
                    f"got {type(generator).__name__}")


def _target(fn, tensor):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{fn}: expected a Tensor, got {type(tensor).__name__}")
    return tensor


def _fill(tensor, values):
    with writing([tensor]):
        tensor.data[...] = values
    return tensor


def _fans(fn, shape):
    if len(shape) < 2:
        raise ValueError(f"{fn}: fan_in and fan_out need a tensor of at least 2 dimensions, "
                         f"got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for an activation (PyTorch's values): linear,
    sigmoid 1; tanh 5/3; relu sqrt(2); leaky_relu sqrt(2 / (1 + slope**2))
    (slope ``param``, default 0.01); selu 3/4."""
    if nonlinearity in ("linear", "identity", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}")


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with ``U(a, b)``."""
    _target("uniform_", tensor)
    if not b >= a:
        raise ValueError(f"uniform_: need a <= b, got a={a}, b={b}")
    rng = as_generator(generator, "uniform_")
    return _fill(tensor, rng.uniform(a, b, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with ``N(mean, std**2)``."""
    _target("normal_", tensor)
    if not std >= 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    rng = as_generator(generator, "normal_")
    return _fill(tensor, rng.normal(mean, std, size=tensor.shape))


def constant_(tensor, value):
    """Fill with ``value``."""
    return _fill(_target("constant_", tensor), value)


def zeros_(tensor):
    """Fill with zeros."""
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill with ones."""
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot uniform: ``U(-r, r)``, ``r = gain * sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans("xavier_uniform_", _target("xavier_uniform_", tensor).shape)
    r = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -r, r, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot normal: ``N(0, s**2)``, ``s = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans("xavier_normal_", _target("xavier_normal_", tensor).shape)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _kaiming_std(fn, tensor, a, mode, nonlinearity):
    fan_in, fan_out = _fans(fn, _target(fn, tensor).shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{fn}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He uniform: ``U(-r, r)``, ``r = sqrt(3) * gain / sqrt(fan)``; the default
    (a = 0, leaky_relu) is the ReLU gain sqrt(2)."""
    std = _kaiming_std("kaiming_uniform_", tensor, a, mode, nonlinearity)
    r = math.sqrt(3.0) * std
    return uniform_(tensor, -r, r, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He normal: ``N(0, (gain / sqrt(fan))**2)``."""
    std = _kaiming_std("kaiming_normal_", tensor, a, mode, nonlinearity)
    return normal_(tensor, 0.0, std, generator)
