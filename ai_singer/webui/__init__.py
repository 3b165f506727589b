"""The web interface (``ai-singer ui``): ``workspace`` (per-session folders, checked uploads), ``jobs``
(background work the page polls), ``stages`` (the command line's stage functions on composed configs) and
``app`` (the Gradio pages; needs the ``ui`` extra). Only ``app`` imports gradio."""
