"""Hugging Face safetensors checkpoint -> RDRR package (manifest, plan, expert-aligned shards)."""
