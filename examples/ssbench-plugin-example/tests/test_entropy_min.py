import math

import pytest
import torch

from ssbench.api import Batch, MethodContext, StepInfo, ce_dice_loss, sigmoid_rampup
from ssbench_plugin_example.entropy_min import EntropyMinConfig, EntropyMinimization, normalised_entropy


def test_normalised_entropy_is_one_for_uniform_and_zero_for_certain_predictions():
    uniform = torch.full((2, 4, 8, 8), 0.25)
    certain = torch.zeros(2, 4, 8, 8)
    certain[:, 2] = 1
    assert normalised_entropy(uniform).item() == pytest.approx(1.0, abs=1e-5)
    assert normalised_entropy(certain).item() == pytest.approx(0.0, abs=1e-4)


def test_normalised_entropy_by_hand_on_a_2x2_case():
    """Two classes, four pixels with probabilities (1/4, 3/4), (1/2, 1/2), (1, 0), (3/4, 1/4): the mean over pixels
    of -sum_k p_k ln(p_k + 1e-6) / ln 2, written out."""
    probs = torch.tensor([[0.25, 0.5, 1.0, 0.75], [0.75, 0.5, 0.0, 0.25]]).reshape(1, 2, 2, 2)
    e = 1e-6
    quarter = -(0.25 * math.log(0.25 + e) + 0.75 * math.log(0.75 + e)) / math.log(2)  # 0.8113
    half = -(2 * 0.5 * math.log(0.5 + e)) / math.log(2)  # 1 - 2e-6
    certain = -(1.0 * math.log(1.0 + e)) / math.log(2)  # -1.4e-6: the 1e-6 inside the log
    expected = (quarter + half + certain + quarter) / 4
    assert expected == pytest.approx(0.6556, abs=1e-4)
    assert normalised_entropy(probs).item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_the_supervised_loss_plus_the_ramped_entropy_of_the_whole_batch():
    torch.manual_seed(0)
    method = EntropyMinimization(EntropyMinConfig(), MethodContext(1, 4, 32, 30000, torch.device("cpu")))
    lab = Batch(torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32)))
    unl = Batch(torch.rand(2, 1, 32, 32))
    method.eval()  # dropout off: the hand computation below sees the same logits
    for it in (0, 15_000, 29_999):
        out = method.training_step(lab, unl, StepInfo(it, 30000))
        logits = method.net(torch.cat([lab.image, unl.image]))
        w = 0.1 * sigmoid_rampup(it // 150, 200.0)
        expected = ce_dice_loss(logits[:2], lab.label) + w * normalised_entropy(logits.softmax(1))
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert out["entropy_weight"].item() == pytest.approx(w)
    assert sigmoid_rampup(0, 200.0) == pytest.approx(math.exp(-5))


def test_a_bad_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        EntropyMinConfig(weight=float("nan"))
