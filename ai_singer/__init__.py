"""ai_singer: singing-voice conversion with a frozen base and per-singer adapters."""
__version__ = "0.1.0"
