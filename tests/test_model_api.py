"""Hooks on for a block and off after it; a forward pass that stops where it is asked to."""

from __future__ import annotations

import pytest
import torch

from transformer_lens_mgp import UsageError
from transformer_lens_mgp.core.model_api import attached, run_until
from transformer_lens_mgp.testing.tiny import build_model, count_hooks, tiny_gpt2


@pytest.fixture(params=["tiny", "gpt2-bridge"])
def model(request):
    return build_model() if request.param == "tiny" else tiny_gpt2()


def test_attached_hooks_run_and_only_they_are_taken_off(model):
    tokens = torch.randint(0, 40, (2, 5))
    seen = []
    model.hook_dict["blocks.0.attn.hook_z"].add_hook(lambda z, hook: seen.append("user"))
    with attached(model, [("blocks.0.attn.hook_z", lambda z, hook: seen.append("ours"))]):
        model(tokens)
    assert seen == ["user", "ours"]
    model(tokens)
    assert seen == ["user", "ours", "user"]  # the user's hook stays, ours is gone
    model.reset_hooks()
    assert count_hooks(model) == 0


def test_attached_hooks_come_off_after_an_error_or_a_bad_name(model):
    zero = ("blocks.1.mlp.hook_post", lambda act, hook: act * 0)
    with pytest.raises(RuntimeError, match="inside"), attached(model, [zero]):
        raise RuntimeError("inside")
    assert count_hooks(model) == 0
    with pytest.raises(UsageError, match="no hook point 'blocks.9.mlp.hook_post'"):
        with attached(model, [zero, ("blocks.9.mlp.hook_post", zero[1])]):
            pass
    assert count_hooks(model) == 0


def test_run_until_returns_the_activation_and_stops_there(model):
    tokens = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.mlp.hook_post"])
    later = []
    hooks = [("blocks.1.attn.hook_z", lambda z, hook: later.append(1))]
    with torch.no_grad():
        found = run_until(model, tokens, "blocks.0.mlp.hook_post", hooks)
    torch.testing.assert_close(found, cache["blocks.0.mlp.hook_post"])
    assert later == []  # nothing after the stop ran
    assert count_hooks(model) == 0
