"""Tuneguard: hallucination-aware fine-tuning on Kubernetes. Shared core: API models, CRD, CLI."""
