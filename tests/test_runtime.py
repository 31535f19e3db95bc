"""Device and precision resolution, autocast and CPU thread control."""
import pytest
import torch

from ace_lora.errors import UserInputError
from ace_lora.runtime import autocast, cpu_threads, resolve_device, resolve_precision


def test_devices_are_checked_by_name_and_availability():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("gpu", "cuda:x", "cpu0", ""):
        with pytest.raises(UserInputError, match="--device must be auto, cpu, cuda, cuda:N or mps"):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu_and_fp32_autocast_is_a_no_op():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "fp32"):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_cpu_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1  # a count that differs (pytest-xdist workers run on one thread)
    with cpu_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with cpu_threads(other):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
