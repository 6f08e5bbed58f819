"""The Fusion Brain (Kandinsky) API: typed models and the client
(prompt text is provider-neutral: listener.prompt)."""

from listener.api.client import FusionBrainClient
from listener.api.models import Accepted, GenerationRequest, GenerationStatus

__all__ = ["Accepted", "FusionBrainClient", "GenerationRequest", "GenerationStatus"]
