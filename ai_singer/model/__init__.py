"""The voice model (VITS / so-vits-svc 4.1 family). Inference needs only :class:`SingerVAE`; the
discriminator lives in :mod:`ai_singer.model.discriminator` and is imported by training code only."""
from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig, SynthOutput

__all__ = ["SingerVAE", "SingerVAEConfig", "SynthOutput"]
