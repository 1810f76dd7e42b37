"""The C++ eager op (``kernels._dispatch``) must compute exactly what the Python route does.

The two routes share the kernel; what differs is the seed draw (torch.randint in
Python, torch's distribution under the generator's lock in C++), the autograd node
(``_ops._MaskScale`` against a C++ ``Function``) and the layout handling. Every
test runs the same call through both, under the same ``torch.manual_seed``, and
compares bits, strides and gradients.
"""

from __future__ import annotations

import os
import shutil
import sysconfig

import pytest
import torch
from torch.autograd import forward_ad

import dropkit
import dropkit.functional as DF
from dropkit import _ops, kernels
from tests.kernels.bitwise import assert_bit_identical
from tests.kernels.subprocess_run import run_python

dispatch = kernels.dispatch_module()
needs_dispatch = pytest.mark.skipif(
    dispatch is None, reason=f"C++ eager op unavailable: {kernels.dispatch_status()}"
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def python_route(monkeypatch):
    """Runs its callable with the C++ op switched off."""

    def run(fn):
        with monkeypatch.context() as patch:
            patch.setattr(_ops, "_dispatch", None)
            return fn()

    return run


def _both(python_route, fn, seed: int = 0):
    torch.manual_seed(seed)
    expected = python_route(fn)
    torch.manual_seed(seed)
    actual = fn()
    return actual, expected


@needs_dispatch
def test_seed_draw_is_torch_randint():
    # The same draws as dropkit.random.draw_seed, and the generator advanced alike.
    for generator in (None, torch.Generator().manual_seed(11)):
        source = generator if generator is not None else torch.default_generator
        state = source.get_state()
        cpp = [dispatch.draw_seed(generator) for _ in range(50)]
        after_cpp = torch.rand(3, generator=generator)
        source.set_state(state)
        python = [dropkit.random.draw_seed(generator) for _ in range(50)]
        after_python = torch.rand(3, generator=generator)
        assert cpp == python
        assert torch.equal(after_cpp, after_python)
    assert len(set(cpp)) == 50 and all(0 <= s < 2**63 - 1 for s in cpp)


@needs_dispatch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0, 1e-9])
def test_forward_and_backward_match_the_python_route(python_route, dtype, p):
    x = torch.randn(33, 257, dtype=dtype)

    def run():
        leaf = x.clone().requires_grad_()
        out = DF.dropout(leaf, p)
        out.backward(torch.full_like(out, 3.0))
        return out.detach(), leaf.grad

    (out, grad), (out_py, grad_py) = _both(python_route, run)
    assert_bit_identical(out, out_py, "c++ op")
    assert_bit_identical(grad, grad_py, "c++ op backward")


@needs_dispatch
def test_the_cpp_route_is_taken(monkeypatch):
    calls = []
    real = dispatch.apply
    monkeypatch.setattr(_ops, "_dispatch", type("Spy", (), {
        "apply": staticmethod(lambda *args: calls.append(args) or real(*args))
    }))
    x = torch.randn(8, 8, requires_grad=True)
    dropkit.Dropout(0.5)(x).sum().backward()
    assert len(calls) == 1
    DF.dropout(torch.nn.Parameter(torch.randn(4)), 0.5)  # a plain tensor to torch
    assert len(calls) == 2

    class Traced(torch.Tensor):
        pass

    # A tensor subclass (its __torch_function__) and a torch.func transform keep the
    # Python route.
    DF.dropout(torch.randn(4).as_subclass(Traced), 0.5)
    assert len(calls) == 2
    torch.func.vmap(lambda v: DF.dropout(v, 0.5), randomness="different")(torch.randn(3, 4))
    assert len(calls) == 2


@needs_dispatch
@pytest.mark.parametrize("layout", ["channels_last", "permuted", "sliced"])
@pytest.mark.parametrize("inplace", [False, True])
def test_layouts_and_inplace_match_the_python_route(python_route, layout, inplace):
    base = torch.randn(2, 3, 5, 7)
    views = {
        "channels_last": lambda: base.to(memory_format=torch.channels_last),
        "permuted": lambda: base.permute(3, 1, 0, 2),
        "sliced": lambda: base[:, :, 1:4],
    }

    def run():
        source = views[layout]().clone() if layout != "sliced" else base.clone()[:, :, 1:4]
        x = source.requires_grad_() if not inplace else source
        h = x * 1 if inplace else x
        out = DF.dropout(h, 0.4, True, inplace)
        if not inplace:
            out.sum().backward()
        return out.detach(), out.stride(), (x.grad if not inplace else None)

    (out, stride, grad), (out_py, stride_py, grad_py) = _both(python_route, run)
    assert_bit_identical(out, out_py, "c++ op")
    assert stride == stride_py
    if grad is not None:
        assert_bit_identical(grad, grad_py, "c++ op backward")


@needs_dispatch
def test_inplace_on_an_intermediate_backpropagates_the_mask(python_route):
    def run():
        leaf = torch.randn(16, 9, requires_grad=True)
        h = leaf * 2
        version = h._version
        out = DF.dropout(h, 0.5, True, True)
        assert out is h and h._version > version
        (out * out).sum().backward()
        return out.detach(), leaf.grad

    (out, grad), (out_py, grad_py) = _both(python_route, run)
    assert_bit_identical(out, out_py)
    assert_bit_identical(grad, grad_py)


@needs_dispatch
def test_double_backward_sees_the_same_mask(python_route):
    def run():
        x = torch.randn(40, 30, requires_grad=True)
        out = DF.dropout(x, 0.3)
        (grad,) = torch.autograd.grad((out * out).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), x)
        return grad.detach(), second

    (grad, second), (grad_py, second_py) = _both(python_route, run)
    assert_bit_identical(grad, grad_py)
    assert_bit_identical(second, second_py)


@needs_dispatch
def test_forward_ad_falls_back_to_the_python_route_without_drawing_twice(python_route):
    x, tangent = torch.randn(6, 10), torch.randn(6, 10)

    def run():
        with forward_ad.dual_level():
            out = DF.dropout(forward_ad.make_dual(x, tangent), 0.5)
            primal, jvp = forward_ad.unpack_dual(out)
        return primal, jvp, torch.rand(2)

    (primal, jvp, after), (primal_py, jvp_py, after_py) = _both(python_route, run)
    assert_bit_identical(primal, primal_py)
    assert_bit_identical(jvp, jvp_py)
    assert torch.equal(after, after_py)  # one seed drawn, as on the Python route
    assert torch.equal(jvp != 0, primal != 0)


@needs_dispatch
def test_checkpoint_recomputes_the_same_mask():
    x = torch.randn(32, 64, requires_grad=True)
    layer = torch.nn.Linear(64, 64)

    def block(h):
        return DF.dropout(torch.relu(layer(h)), 0.5)

    torch.manual_seed(5)
    block(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).sum().backward()
    assert torch.equal(x.grad, plain)


@needs_dispatch
def test_seeded_generator_and_empty_inputs(python_route):
    def run():
        g = torch.Generator().manual_seed(3)
        return (
            DF.dropout(torch.ones(100), 0.5, seed=2**64 - 1, offset=2**63),
            DF.dropout(torch.ones(100), 0.5, generator=g),
            DF.dropout(torch.ones(0, 4), 0.5),
        )

    for actual, expected in zip(*_both(python_route, run), strict=True):
        assert_bit_identical(actual, expected)


@needs_dispatch
def test_init_refuses_a_foreign_capsule():
    import ctypes

    capsule = ctypes.pythonapi.PyCapsule_New
    capsule.restype, capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p,
                                                           ctypes.c_void_p]
    with pytest.raises(ValueError, match="_C_API capsule"):
        dispatch.init(capsule(1, b"someone.else", None))


_STATUS = "from dropkit import kernels; print(kernels.dispatch_status())"


def test_env_var_selects_the_route():
    result = run_python(_STATUS, DROPKIT_DISPATCH="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python (DROPKIT_DISPATCH=0)"
    result = run_python(_STATUS, DROPKIT_NATIVE="0")
    assert "the native kernel is unavailable (DROPKIT_NATIVE=0)" in result.stdout
    result = run_python("import dropkit", DROPKIT_DISPATCH="fast")
    assert result.returncode != 0 and "DROPKIT_DISPATCH has to be one of" in result.stderr


def test_a_build_for_another_torch_is_never_used():
    code = (
        "import sys, types\n"
        "sys.modules['dropkit.kernels._dispatch'] = types.SimpleNamespace("
        "TORCH_VERSION='1.0.0', init=lambda api: 1 / 0)\n" + _STATUS
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "built for torch 1.0.0, running torch" in result.stdout
    result = run_python(code, DROPKIT_DISPATCH="1")
    assert result.returncode != 0
    assert "DROPKIT_DISPATCH=1 requires dropkit's C++ eager op" in result.stderr


def test_missing_build_keeps_the_python_route_silently():
    code = "import sys; sys.modules['dropkit.kernels._dispatch'] = None\n" + _STATUS + (
        "\nimport torch, dropkit.functional as F; F.dropout(torch.ones(9), 0.5)"
    )
    result = run_python(code)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("python (not built for this install")


def test_cpp_op_is_built_where_a_cpp_compiler_exists():
    # Guards against the optional build failing silently: dropkit would still work, on
    # the slower Python route, and every test above would skip.
    disabled = ("DROPKIT_NATIVE", "DROPKIT_DISPATCH")
    if any(os.environ.get(var, "").strip() == "0" for var in disabled):
        pytest.skip("the native kernel or the C++ op is disabled by the environment")
    compiler = (sysconfig.get_config_var("CXX") or "c++").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}) on this machine")
    assert dispatch is not None, (
        f"C++ compiler present but the C++ eager op is {kernels.dispatch_status()}: install with "
        "`pip install --no-build-isolation -e .` (as make does) so torch's headers are found"
    )
