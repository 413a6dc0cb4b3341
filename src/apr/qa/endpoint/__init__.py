"""Certify a remote OpenAI-compatible endpoint (`apr certify --endpoint URL`): its behaviour through the API, with
the gates that need a checkpoint's files or apr's engine recorded not applicable (docs/endpoint.md)."""
