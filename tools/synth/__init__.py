"""A deterministic synthetic singing corpus: phones, singers, melodies, a source-filter voice and
accompaniment stems. Entry point: ``python tools/synth_corpus.py --out data/synth``.

Modules: ``phones`` (the phone inventory with formant targets), ``singers`` (per-singer voice
parameters), ``melody`` (phrases and songs as notes with syllables), ``voice`` (the source-filter
renderer with frame-level phone labels), ``accompaniment`` (pad and drum stems), ``corpus`` (the
on-disk layout and ``corpus.json``).
"""
