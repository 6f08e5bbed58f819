"""The Fusion Brain (Kandinsky) API: typed models, prompt preparation and the client."""

from listener.api.client import FusionBrainClient
from listener.api.models import Accepted, GenerationRequest, GenerationStatus

__all__ = ["Accepted", "FusionBrainClient", "GenerationRequest", "GenerationStatus"]
