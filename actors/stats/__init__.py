"""The stats collector actor: shared per-container samplers for `docker stats`."""
