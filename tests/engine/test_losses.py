import numpy as np
import ot
import pytest
import torch

from lineas_engine import ot_loss, wasserstein_1d_sq


def _exact_lp(x: np.ndarray, y: np.ndarray) -> float:
    """Squared W2 between uniform empirical measures by the exact LP (POT's network simplex)."""
    a = np.full(len(x), 1 / len(x))
    b = np.full(len(y), 1 / len(y))
    return float(ot.emd2(a, b, (x[:, None] - y[None, :]) ** 2))


@pytest.mark.parametrize("n,m", [(32, 32), (7, 7), (32, 20), (5, 13), (1, 4), (30, 31)])
def test_matches_pot_and_exact_lp(n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randn(m, 6, generator=g, dtype=torch.float64) * 2 + 0.7
    ours = wasserstein_1d_sq(x, y)
    pot = torch.as_tensor(ot.wasserstein_1d(x.numpy(), y.numpy(), p=2))
    torch.testing.assert_close(ours, pot, rtol=1e-10, atol=1e-12)
    for j in range(3):
        assert ours[j].item() == pytest.approx(_exact_lp(x[:, j].numpy(), y[:, j].numpy()), rel=1e-9, abs=1e-12)


def test_pot_backend_gives_same_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(12, 5, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y = torch.randn(9, 5, generator=g, dtype=torch.float64)
    a, b = wasserstein_1d_sq(x1, y), wasserstein_1d_sq(x2, y, method="pot")
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_gradcheck_unequal_counts():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: wasserstein_1d_sq(t, y), (x,))


def test_zero_for_permuted_samples_and_translation_closed_form():
    x = torch.randn(10, 4)
    assert torch.allclose(wasserstein_1d_sq(x, x[torch.randperm(10)]), torch.zeros(4))
    # shifting a distribution by c costs exactly c^2
    torch.testing.assert_close(wasserstein_1d_sq(x, x + 3.0), torch.full((4,), 9.0))


def test_ot_loss_reductions():
    g = torch.Generator().manual_seed(2)
    src = {"a": torch.randn(8, 3, generator=g), "b": torch.randn(8, 5, generator=g)}
    tgt = {"a": torch.randn(6, 3, generator=g), "b": torch.randn(6, 5, generator=g)}
    per = {k: wasserstein_1d_sq(src[k], tgt[k]) for k in src}
    torch.testing.assert_close(ot_loss(src, tgt, "mean"), (per["a"].mean() + per["b"].mean()) / 2)
    torch.testing.assert_close(ot_loss(src, tgt, "sum"), per["a"].sum() + per["b"].sum())
    with pytest.raises(ValueError, match="reduction"):
        ot_loss(src, tgt, "max")


def test_shape_errors():
    with pytest.raises(ValueError, match="same d"):
        wasserstein_1d_sq(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least one sample"):
        wasserstein_1d_sq(torch.randn(0, 2), torch.randn(3, 2))
