"""Fusion Brain (Kandinsky) as an image provider: its client (`client`), answer models
(`models`), settings (`settings`), the engine's `Provider` (`provider`), the registry's
`Spec` (`spec`) and its emulator (`emulator`). Nothing is imported here: a listener
running another provider, or the emulator alone, carries only what it uses."""
