"""`--torch_compile`: every model family traces into one graph, and no trainer recompiles for a smaller batch."""

import pytest
import torch
import torch._dynamo

from hf_vision_distill.distillation import DistillationConfig, DistillationTrainer
from hf_vision_distill.models import load_image_classifier

LABELS = {0: "cat", 1: "dog", 2: "ship"}
TINY = {
    "vit-cifar": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    "compact-cnn": {"hidden_sizes": [8, 8, 16]},
    "simple-cnn": None,
    "hybrid-resnet18": {"embedding_size": 8, "hidden_sizes": [8, 8, 16, 16]},
}
OUTPUTS = [{}, {"output_hidden_states": True}, {"output_attentions": True}]


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("outputs", OUTPUTS, ids=["logits", "hidden_states", "attentions"])
@pytest.mark.slow
def test_a_training_step_traces_without_graph_breaks(name, outputs):
    model = load_image_classifier(name, id2label=LABELS, config_overrides=TINY[name]).model
    if "output_attentions" in outputs and "cnn" in name:
        pytest.skip("CNNs have no attention maps")
    if "output_attentions" in outputs and name == "vit-cifar":
        model.set_attn_implementation("eager")  # the implementation that computes attention probabilities
    if outputs and name == "vit-cifar":
        # transformers installs its output-capturing hooks on the first call that asks for outputs: a one-off graph
        # break (the distillation trainer's probe makes that call before training). Steady state is what counts.
        model(pixel_values=torch.randn(1, 3, 32, 32), **outputs)

    def training_step(pixel_values, labels):
        result = model(pixel_values=pixel_values, **outputs)
        extra = [*(result.hidden_states or ()), *(getattr(result, "attentions", None) or ())]
        loss = torch.nn.functional.cross_entropy(result.logits.float(), labels)
        return loss + sum(tensor.float().mean() for tensor in extra)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(training_step)(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_distillation_does_not_recompile_for_the_last_smaller_batch(tmp_path):
    teacher = load_image_classifier("vit-cifar", id2label=LABELS, config_overrides=TINY["vit-cifar"]).model
    student = load_image_classifier("compact-cnn", id2label=LABELS, config_overrides=TINY["compact-cnn"]).model
    generator = torch.Generator().manual_seed(0)
    rows = [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": index % 3} for index in range(7)]

    def stack(batch):
        return {"pixel_values": torch.stack([row["pixel_values"] for row in batch]),
                "labels": torch.tensor([row["labels"] for row in batch])}  # fmt: skip

    # 7 images in batches of 4: 4, then 3. The eager backend traces and guards like inductor, without codegen.
    args = DistillationConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                              report_to="none", save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                              attention_loss_weight=0.1, soft_loss_weight=0.5, label_loss_weight=0.5,
                              torch_compile_backend="eager")  # fmt: skip
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=rows,
                            data_collator=stack).train()  # fmt: skip
