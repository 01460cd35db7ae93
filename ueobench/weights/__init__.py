"""Weights shipped with ueobench (safetensors, fp16) and their SHA-256 checksums."""
