"""cnn baseline: timm architectures, ONNX export + ONNX Runtime parity and latency in the row, and
the op counter's MACs cross-checked against the ONNX graph."""
import pytest
import torch
from torch import nn

from suite.baselines.cnn import TIMM_FAMILY
from suite.train import Cell, run_cell


def test_onnx_runtime_agrees_with_pytorch_and_macs_match_the_graph(host):
    rows = run_cell(Cell("cnn", "digits", "convnet", epochs=2, limit_train=600, options=(("onnx", True),)), host)
    (row,) = rows
    assert row["status"] == "ok", row.get("error")
    onnx = row["extra"]["onnx"]
    assert onnx["n_compared"] == row["n_test"] == 360
    assert onnx["agreement"] >= 0.999 and onnx["max_abs_logit_diff"] < 1e-3
    assert onnx["latency_ms_per_sample"] > 0 and onnx["torch_latency_ms_per_sample"] > 0
    # MACs per inference from the model's hooks == from the ONNX graph's Conv/Gemm nodes:
    # 16C3p1 on 1x8x8, P2, 32C3p1 on 16x4x4, P2, 128, 10
    expected = 16 * 9 * 64 + 32 * 16 * 9 * 16 + 32 * 2 * 2 * 128 + 128 * 10
    assert row["macs"] == onnx["macs_graph"] == expected


@pytest.mark.parametrize("name, params", [("timm_resnet18_cifar", 11_173_962), ("timm_resnet18w16_cifar", None)])
def test_timm_archs_build_for_32x32(host, name, params):
    rule, arch = host.rule("cnn"), host.arch(name)
    assert arch.family == TIMM_FAMILY and rule.supports(arch, "cifar10")
    model = rule.build(arch, (3, 32, 32), 10, "torch", dict(rule.defaults)).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params
    assert model.conv1.out_channels == (64 if params else 16)
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 3, 32, 32))
    assert feats.shape[-2:] == (4, 4)  # stride 8 after the stem: 32 -> 4 in the last stage


def test_cnn_skips_foreign_families(host):
    from suite.archs import ArchSpec

    assert not host.rule("cnn").supports(ArchSpec("custom_net", family="some_rule_resnet"), "cifar10")
    assert host.rule("cnn").supports(host.arch("convnet"), "mnist")
