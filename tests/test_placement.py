"""Per-site devices: a model split over devices gets each site's ablated values and mask on
that site's device and its losses on the unembedding's. A CPU has one device, so the split
model here puts its second block and unembedding on PyTorch's ``meta`` device: enough to
check where things are put, not to run it."""

from __future__ import annotations

import torch
from torch import nn

from transformer_lens_mgp import ModelDims
from transformer_lens_mgp.core.hooks import mask_hooks, zero_activations
from transformer_lens_mgp.core.model_api import model_device
from transformer_lens_mgp.core.nodes import SiteMasks
from transformer_lens_mgp.core.placement import Placement, site_module
from transformer_lens_mgp.testing.tiny import build_model, tiny_gpt2

CPU, META = torch.device("cpu"), torch.device("meta")
DIMS = ModelDims(n_layers=2, n_heads=2, d_head=3, d_mlp=5)


class Block(nn.Module):
    def __init__(self, device):
        super().__init__()
        self.attn = nn.Linear(4, 6, device=device)
        self.mlp = nn.Linear(4, 5, device=device)


class SplitModel(nn.Module):
    """Embedding and block 0 on the CPU, block 1 and the unembedding elsewhere."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([Block(CPU), Block(META)])
        self.unembed = nn.Linear(4, 10, device=META)


def test_each_site_is_looked_up_on_its_own_block():
    placement = Placement.of(SplitModel(), DIMS)
    assert placement.inputs == CPU and placement.answers == META
    assert placement.sites == {
        "blocks.0.attn.hook_z": CPU,
        "blocks.1.attn.hook_z": META,
        "blocks.0.mlp.hook_post": CPU,
        "blocks.1.mlp.hook_post": META,
    }
    assert placement.devices == (CPU, META)


def test_tokens_go_to_the_embedding_not_the_first_parameter():
    model = nn.Module()
    model.scale = nn.Parameter(torch.zeros(1, device=META))
    model.embed = nn.Embedding(10, 4)
    assert next(model.parameters()).device == META
    assert model_device(model) == CPU


def test_ablated_values_and_masks_land_on_their_sites_device():
    placement = Placement.of(SplitModel(), DIMS)
    zeros = zero_activations(DIMS, placement)
    assert {name: value.device for name, value in zeros.items()} == placement.sites
    masks = SiteMasks(torch.ones(DIMS.shape("attn_neuron")), torch.ones(DIMS.shape("mlp_neuron")))
    for name, hook in mask_hooks(DIMS, masks, zeros):
        assert hook.keywords["mask"].device == placement.sites[name], name


def test_real_models_name_a_module_for_every_site():
    for model in (build_model(), tiny_gpt2()):
        dims = ModelDims.from_cfg(model.cfg)
        for name in dims.hook_names():
            module = site_module(model, name)
            assert module is not None and next(module.parameters(), None) is not None, name
        placement = Placement.of(model, dims)
        assert placement.devices == (CPU,)
