"""Importers: weights the community already has (fairseq HuBERT/ContentVec checkpoints, ...) turned into
the self-describing folders ai_singer reads.

Entry point: ``python -m ai_singer.importers KIND SRC DST`` (= ``ai-singer import KIND SRC DST``); each
kind lives in its own module and registers itself in :mod:`ai_singer.importers.__main__`. Downloaded
files are read with :func:`ai_singer.importers.safe_load.load_checkpoint` (``torch.load(weights_only=True)``
with an explicit allow-list): nothing in them is ever executed.
"""
