"""Entry points into other tools: HF generate, lm-evaluation-harness, accelerate sharding."""
