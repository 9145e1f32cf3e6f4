"""Build a tiny random LoRA adapter (PEFT layout) for the tiny model, with nothing downloaded.

Run with the vLLM environment's Python: ``python make_adapter.py MODEL_DIR OUT_DIR [SEED]``.
Rank 8 on every layer's q_proj and v_proj; the weights are random, which is all a serving
test needs (a request naming it runs through vLLM's LoRA path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RANK = 8


def main(model_dir: Path, out: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden = config["hidden_size"]
    head_dim = hidden // config["num_attention_heads"]
    outputs = {"q_proj": hidden, "v_proj": config["num_key_value_heads"] * head_dim}
    torch.manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, width in outputs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, hidden) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(width, RANK) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(outputs),
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
