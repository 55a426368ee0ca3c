"""Mixed precision on the CPU: SOLVER.AMP.ENABLED means bfloat16 autocast of the forward pass
(model and losses), as detectron2's AMPTrainer means float16 on a GPU; backward and the
optimizer step stay outside autocast, and the weights stay float32."""
import math

import pytest
import torch
from conftest import TINY_TRAINING
from detectron2.engine import AMPTrainer, SimpleTrainer

from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.training import BFloat16CPUTrainer, Trainer, autocast_forward, step_trainer

QUICKSTART = "configs/quickstart_synthetic.yaml"


class AutocastProbe(torch.autograd.Function):
    """Identity that records whether CPU autocast is on in its forward and its backward."""

    seen = []

    @staticmethod
    def forward(ctx, x):
        AutocastProbe.seen.append(("forward", torch.is_autocast_enabled("cpu")))
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        AutocastProbe.seen.append(("backward", torch.is_autocast_enabled("cpu")))
        return grad


class Probed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(AutocastProbe.apply(x))


def test_only_the_forward_pass_runs_in_bfloat16():
    AutocastProbe.seen.clear()
    model = Probed()
    with autocast_forward(model, "cpu"):
        out = model(torch.ones(2, 4, requires_grad=True))
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert AutocastProbe.seen == [("forward", True), ("backward", False)]
    assert model.linear.weight.dtype == model.linear.weight.grad.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_the_model_computes_in_float32_again_after_the_block_even_if_the_forward_failed():
    model = Probed()
    with pytest.raises(RuntimeError), autocast_forward(model, "cpu"):
        model(torch.ones(2, 5))  # the linear layer expects 4 features
    assert not torch.is_autocast_enabled("cpu")
    assert model(torch.ones(2, 4)).dtype == torch.float32


@pytest.mark.parametrize("amp, device, expected", [
    (False, "cpu", SimpleTrainer), (False, "cuda", SimpleTrainer),
    (True, "cpu", BFloat16CPUTrainer), (True, "cuda", AMPTrainer), (True, "cuda:1", AMPTrainer),
])
def test_each_precision_gets_its_detectron2_trainer(amp, device, expected):
    model = torch.nn.Linear(2, 2)
    trainer = step_trainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), amp=amp, device=device)
    assert type(trainer) is expected


def test_amp_on_a_cpu_with_bfloat16_trains_the_forward_pass_in_bfloat16(
        tiny_nuclei, tmp_path, cpu_with_bfloat16):
    cfg = build_cfg(QUICKSTART, [*TINY_TRAINING, *tiny_nuclei["opts"], "SOLVER.AMP.ENABLED", "True",
                                 "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path)])
    assert (cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED) == ("cpu", True)
    trainer = Trainer(cfg)
    assert type(trainer._trainer) is BFloat16CPUTrainer
    stem_outputs = []
    trainer.model.backbone.bottom_up.stem.register_forward_hook(
        lambda module, args, output: stem_outputs.append(output.dtype))
    trainer.train()  # 2 steps, then the final evaluation of the 4 images
    assert stem_outputs == [torch.bfloat16] * 2 + [torch.float32] * 4
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert math.isfinite(trainer.storage.history("total_loss").latest())
