"""Per-frame features of a clip: F0 (:mod:`.pitch`), content features (:mod:`.content`),
spectrograms (:mod:`.spectrogram`) and volume (:mod:`.volume`).

Framing: the model runs at ``sr`` with hop ``hop``; a clip of ``N`` samples has ``N // hop`` frames and
frame ``i`` is centred at ``(i + 0.5) * hop / sr`` seconds. Every stream here follows it.

Import the submodules directly (``from ai_singer.features.pitch import extract_f0``); this package
imports nothing heavy on its own.
"""
