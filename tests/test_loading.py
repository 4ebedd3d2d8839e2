"""backbones/loading.py: weight file formats, wrappers, strict loading, and naming the file's network."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.backbones.loading import (load_backbone, load_backbone_weights, matching_networks,
                                                      strip_wrapper_prefixes, unwrap)

E = 16


@pytest.fixture(scope="module")
def source():
    """A trained-looking tiny_resnet: BN running stats moved away from their defaults."""
    model = get_model("tiny_resnet", num_features=E)
    with torch.no_grad():
        model(torch.randn(8, 3, 112, 112))  # train-mode forward updates the running statistics
    return model.eval()


@pytest.fixture
def model_pt(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    return path


def _assert_same_weights(state, model):
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- file formats

def test_plain_state_dict(model_pt, source):
    _assert_same_weights(load_backbone_weights(model_pt), source)


def test_arcface_torch_checkpoint(tmp_path, source):
    path = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"epoch": 3, "global_step": 120, "state_dict_backbone": source.state_dict(),
                "state_dict_softmax_fc": {"weight": torch.randn(5, E)},
                "state_optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}, path)
    _assert_same_weights(load_backbone_weights(path), source)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, source, prefix):
    path = tmp_path / "295672backbone.pth"
    torch.save({f"{prefix}{k}": v for k, v in source.state_dict().items()}, path)
    _assert_same_weights(load_backbone_weights(path), source)


def test_a_prefix_on_some_keys_is_part_of_the_name():
    state = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert strip_wrapper_prefixes(state) == state


def test_not_a_backbone_file(tmp_path):
    path = tmp_path / "header.pth"
    torch.save(torch.randn(3, 4), path)
    with pytest.raises(ValueError, match="header.pth: not a backbone state_dict; found a single tensor"):
        load_backbone_weights(path)


# ---------------------------------------------------------------- wrappers

def test_unwrap_sees_through_data_parallel_and_compile():
    model = get_model("tiny_mfn", num_features=E)
    assert unwrap(nn.DataParallel(model)) is model
    assert unwrap(torch.compile(nn.DataParallel(model))) is model
    assert unwrap(model) is model


# ---------------------------------------------------------------- loading

def test_load_backbone_reproduces_the_source_in_eval_mode(model_pt, source):
    model = load_backbone("tiny_resnet", model_pt, E)
    assert not model.training and not any(t.is_meta for t in model.state_dict().values())
    images = torch.randn(2, 3, 112, 112)
    assert torch.equal(model(images), source(images))


def test_half_precision_file_gives_an_fp32_model(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}, path)
    model = load_backbone("tiny_resnet", path, E)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_matching_networks_reads_the_embedding_size_from_the_file(source):
    assert matching_networks(source.state_dict()) == [("tiny_resnet", E)]
    assert matching_networks({"weight": torch.zeros(3)}) == []


@pytest.mark.parametrize("network", ["tiny_mfn", "mbf"])
def test_wrong_network_names_the_one_the_file_is(model_pt, network):
    with pytest.raises(ValueError) as info:
        load_backbone(network, model_pt, E)
    message = str(info.value)
    assert message == (f"{model_pt}: does not fit --network {network} with embedding size {E}: this file looks "
                       f"like a tiny_resnet with embedding size {E} (keys and shapes match); pass --network "
                       f"tiny_resnet")


def test_without_a_size_the_file_gives_it(model_pt, source):
    model = load_backbone("tiny_resnet", model_pt)  # E = 16, not the network's default 512
    images = torch.randn(2, 3, 112, 112)
    assert model(images).shape == (2, E) and torch.equal(model(images), source(images))


def test_wrong_network_without_a_size_names_only_the_network(model_pt):
    with pytest.raises(ValueError) as info:
        load_backbone("tiny_mfn", model_pt)
    assert str(info.value) == (f"{model_pt}: does not fit --network tiny_mfn: this file looks like a tiny_resnet "
                               f"with embedding size {E} (keys and shapes match); pass --network tiny_resnet")


def test_wrong_network_and_size_names_both(model_pt):
    with pytest.raises(ValueError, match=r"with embedding size 512: .*; pass --network tiny_resnet and "
                                         rf"--embedding-size {E}$"):
        load_backbone("tiny_mfn", model_pt, 512)


def test_right_network_wrong_size_names_the_size(model_pt):
    with pytest.raises(ValueError, match=rf"looks like a tiny_resnet with embedding size {E} .*; "
                                         rf"pass --embedding-size {E}$"):
        load_backbone("tiny_resnet", model_pt, 32)


def test_no_match_gives_counts_and_a_few_examples(tmp_path, source):
    state = source.state_dict()
    state.pop("fc.weight")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_backbone("tiny_mfn", path, E)
    message = str(info.value)
    assert len(message) < 700, message  # a few examples, not kilobytes of key names
    assert "missing (e.g. conv1.conv.weight, " in message and ", ...)" in message
    assert "unexpected (e.g. conv1.weight, " in message
    assert "No registered backbone has these keys and shapes" in message


def test_unknown_network_suggests_a_name(model_pt):
    with pytest.raises(ValueError, match="unknown backbone 'tiny_resnt'. Did you mean 'tiny_resnet'"):
        load_backbone("tiny_resnt", model_pt)
