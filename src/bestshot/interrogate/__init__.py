"""Image → prompt: the CLIP interrogator (``interrogator``), a trainable CLIP-prefix captioner
(``captioner``) and the Kaggle image-to-prompts metric (``metric``); CLI commands in ``cli``."""
