"""The behaviour every model family of the library owes its users, checked the same way for each (transformers'
common model tests): tuples without return_dict, batch independence in eval mode, save/load round trips, every
parameter initialised and trained, gradient checkpointing, and torch.compile."""

import pytest
import torch
from test_model_contract import EXPECTED, build
from transformers import AutoConfig, AutoModelForImageClassification

FAMILIES = sorted(EXPECTED)


def images(count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_return_dict_false_gives_the_same_logits_as_a_tuple(family):
    model = build(family)
    with torch.no_grad():
        outputs = model(pixel_values=images())
        as_tuple = model(pixel_values=images(), return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_alone_gets_the_logits_it_gets_in_a_batch(family):
    model = build(family)
    batch = images(4)
    with torch.no_grad():
        together = model(pixel_values=batch).logits
        alone = torch.cat([model(pixel_values=batch[index : index + 1]).logits for index in range(4)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_give_the_same_logits_through_the_auto_classes(family, tmp_path):
    model = build(family)
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=images()).logits, model(pixel_values=images()).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_is_finite_and_gets_a_gradient(family):
    model = build(family).train()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), f"{name} is not finite after initialisation"
    logits = model(pixel_values=images(4)).logits
    torch.nn.functional.cross_entropy(logits, torch.arange(4) % logits.shape[-1]).backward()
    missing = [
        name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None
    ]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_changes_no_gradient(family):
    if not build(family).supports_gradient_checkpointing:
        pytest.skip(f"{family} declares no gradient checkpointing")
    gradients = []
    for checkpointing in (False, True):
        model = build(family).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(pixel_values=images()).logits.sum().backward()
        gradients.append({name: parameter.grad for name, parameter in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_compile_gives_the_eager_logits(family):
    model = build(family)
    with torch.no_grad():
        eager = model(pixel_values=images()).logits
        compiled = torch.compile(model, backend="eager")(pixel_values=images()).logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
