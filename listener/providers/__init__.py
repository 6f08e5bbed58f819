"""Image APIs behind the engine's `Provider` seam (listener.engine.ports): one module each."""
