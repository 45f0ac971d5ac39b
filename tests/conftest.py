"""Shared pytest fixtures. Engine fixtures (one real vLLM engine per session) live here."""
