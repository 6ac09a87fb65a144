"""Model cards for the shipped family: what a model is, how it was trained, how good it is.

Validation figures are measured here, on the corpus's validation split: loss and perplexity
for every model, and for a draft its greedy top-1 / top-5 agreement with the target (the
fraction of positions where the target's greedy token is the draft's top-1 / in its top-5 —
an upper bound on what speculation can accept per proposed token)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from ember.models.loader import load_model
from ember.train.data import val_batches


@torch.inference_mode()
def evaluate(
    model_dir: Path, val_tokens, *, target_dir: Path | None = None, seq_len: int = 512, max_tokens: int = 32768
) -> dict:
    model = load_model(str(model_dir), dtype="float32").module
    target = load_model(str(target_dir), dtype="float32").module if target_dir else None
    loss_sum = count = top1 = top5 = 0.0
    for inputs, labels in val_batches(val_tokens, seq_len=seq_len, batch_size=4, max_tokens=max_tokens):
        logits = model.compute_logits(model(inputs))
        loss_sum += torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
        count += labels.numel()
        if target is not None:
            greedy = target.compute_logits(target(inputs)).argmax(-1)
            top = logits.topk(5, dim=-1).indices
            top1 += (top[..., 0] == greedy).sum().item()
            top5 += (top == greedy[..., None]).any(-1).sum().item()
    result = {"val_loss": loss_sum / count, "val_ppl": math.exp(loss_sum / count), "val_tokens": int(count)}
    if target is not None:
        result.update(top1_agreement=top1 / count, top5_agreement=top5 / count)
    return result


def last_train_loss(run_dir: Path, last: int = 5) -> float:
    """The mean of the last ``last`` logged training losses of a run (its ``metrics.jsonl``):
    one logged step is one batch, too noisy to quote alone."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [m["loss"] for m in records if "loss" in m][-last:]
    return sum(losses) / len(losses)


def write_card(model_dir: Path, *, name: str, command: str, figures: dict, train_loss: float) -> Path:
    info = json.loads((model_dir / "ember_train.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    params = sum(t.numel() for t in load_model(str(model_dir), device="meta").module.parameters())
    loss_label = "train loss"
    if info.get("distilled_from"):
        alpha = info.get("recipe", {}).get("train", {}).get("distill_alpha")
        loss_label = (
            f"train objective ({1 - alpha:.1f} x CE + {alpha:.1f} x KL to the teacher)"
            if alpha is not None
            else "train objective (CE + KL to the teacher)"
        )
    lines = [
        f"# {name}",
        "",
        f"A Llama-architecture model trained from scratch by `ember train` on the Python standard library "
        f"(Python {info.get('corpus', {}).get('python_version', '?')}, test suites excluded). "
        "It continues Python code; it is not an assistant.",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {params / 1e6:.1f} M ({config['num_hidden_layers']} layers x {config['hidden_size']}, "
        f"{config['num_attention_heads']} heads / {config['num_key_value_heads']} KV heads, "
        f"vocab {config['vocab_size']}, tied embeddings) |",
        f"| context | {config['max_position_embeddings']} tokens |",
        f"| training command | `{command}` |",
        f"| steps | {info.get('step')} |",
        f"| tokens seen | {info.get('tokens_seen', 0) / 1e6:.2f} M ({info.get('train_seconds', 0) / 60:.0f} min) |",
        f"| {loss_label} (mean of the last 5 logged steps) | {train_loss:.3f} |",
        f"| validation loss / perplexity (measured here) | {figures['val_loss']:.3f} / {figures['val_ppl']:.1f} "
        f"({figures['val_tokens']} tokens) |",
    ]
    if "top1_agreement" in figures:
        lines.append(
            f"| greedy agreement with ember-tiny (validation) | top-1 {figures['top1_agreement']:.1%}, "
            f"top-5 {figures['top5_agreement']:.1%} |"
        )
    lines += [
        "",
        'Weights: bf16 safetensors. Load with `LLM(model="' + name + '")` or '
        "`transformers.AutoModelForCausalLM.from_pretrained(path)`.",
        "",
    ]
    card = model_dir / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card


def main(argv: list[str]) -> int:
    """python -m ember.train.model_card NAME MODEL_DIR RUN_DIR 'COMMAND' [TARGET_DIR]"""
    from ember.train.recipes import get_recipe
    from ember.train.run import RunOptions, prepare_data

    name, model_dir, run_dir, command = argv[0], Path(argv[1]), Path(argv[2]), argv[3]
    target_dir = Path(argv[4]) if len(argv) > 4 else None
    data = prepare_data(get_recipe("ember-tiny"), RunOptions(out_dir=Path("/tmp/ember-card-prep")))
    figures = evaluate(model_dir, data.tokens["val"], target_dir=target_dir)
    print(json.dumps(figures, indent=2))
    print(write_card(model_dir, name=name, command=command, figures=figures, train_loss=last_train_loss(run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
